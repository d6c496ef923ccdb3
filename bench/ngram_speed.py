"""N-gram table speed: prefill tokens/s and expert-probability lookups/s, normalized vs hashed_target.

    python3 bench/ngram_speed.py                          # 100M tokens, orders 2..16, 4,194,304 buckets (GPU)
    BENCH_TOKENS=2000000 NGRAM_BUCKETS=1048576 python3 bench/ngram_speed.py   # CPU-sized
"""
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

TOKENS = int(os.environ.get("BENCH_TOKENS", 100_000_000))
BLOCK = int(os.environ.get("BENCH_BLOCK", 1 << 22))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(scoring: str, max_order: int, buckets: int, device) -> tuple[float, float]:
    cache = tg.NgramCache(max_order, buckets, 1024, scoring, 2, device)
    gen = torch.Generator(device=device).manual_seed(0)
    # Zipf-like tokens with repeats, closer to text than uniform noise
    toks = (torch.rand(TOKENS, generator=gen, device=device) ** 3 * 1024).long()
    sync()
    t0 = time.perf_counter()
    span = max_order - 1
    for s in range(0, TOKENS - 1, BLOCK):  # the same per-block work as prefill_ngram_cache on one rank
        s0 = max(0, s - span)
        cache.add(*tg.stream_key_counts(cache, toks[s0:s + BLOCK], max(s - s0, 1)))
    sync()
    prefill = TOKENS / (time.perf_counter() - t0)
    idx = torch.randint(max_order, TOKENS, (min(TOKENS, 1 << 20),), generator=gen, device=device)
    t0 = time.perf_counter()
    p, valid = cache.expert_probs(tg.target_keys(cache, toks, idx, toks[idx]))
    sync()
    lookup = idx.numel() / (time.perf_counter() - t0)
    return prefill, lookup


def main():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    buckets = int(os.environ.get("NGRAM_BUCKETS", 4194304))
    print(f"device:{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} tokens:{TOKENS} "
          f"buckets:{buckets} block:{BLOCK}")
    print("| orders | scoring | prefill tokens/s | scored positions/s (all orders) |\n|---|---|---|---|")
    for max_order in (7, 16):
        for scoring in ("hashed_target", "normalized"):
            prefill, lookup = run(scoring, max_order, buckets, device)
            print(f"| 2..{max_order} | {scoring} | {prefill / 1e6:,.3g}M | {lookup / 1e6:,.3g}M |")


if __name__ == "__main__":
    main()
