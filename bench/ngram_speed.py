"""N-gram table speed: prefill tokens/s and lookups/s for hashed_target, normalized, and normalized with the tilt
head's hints (make_cache(..., hints=True): every add also keeps each context's most frequent next token), and the
training oracle's frozen table (make_cache(..., frozen=True)) where train_gpt.py has one.

    python3 bench/ngram_speed.py                      # 100M tokens, orders 2..7 and 2..16, 4,194,304 buckets (GPU)
    BENCH_TOKENS=300000 NGRAM_BUCKETS=1048576 python3 bench/ngram_speed.py   # CPU-sized: ~1-2 min on 2 cores
On a CPU shared with other work, prefix OMP_NUM_THREADS=1 (two threads on two busy cores spin against each other).
BENCH_BLOCK (4,194,304) tokens per prefill block; lookups are timed at min(BENCH_TOKENS, 1,048,576) random positions.

Prefill does prefill_ngram_cache's per-block work on one rank (stream_key_counts, then NgramCache.add) on
Zipf-like random tokens. Lookups, per scored position and all orders at once, as score_chunk does them:
  expert_probs  target_keys + NgramCache.expert_probs (the mixer heads' per-order probabilities)
  hint          target_keys + NgramCache.hint (the tilt head's hinted token; normalized tables with hints only)
"""
import inspect
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

TOKENS = int(os.environ.get("BENCH_TOKENS", 100_000_000))
BLOCK = int(os.environ.get("BENCH_BLOCK", 1 << 22))
VOCAB, MIN_COUNT, CONFIDENCE = 1024, 2, 0.5  # train_gpt's defaults (VOCAB_SIZE, NGRAM_MIN_COUNT, NGRAM_TILT_CONFIDENCE)
# (label, NGRAM_SCORING, make_cache keyword arguments): the eval cache of each head, and the training oracle's
# frozen table when this train_gpt.py has one (read-only after prefill)
KINDS = [("hashed_target", "hashed_target", {}), ("normalized", "normalized", {}),
         ("normalized + hints (tilt)", "normalized", {"hints": True})]
if "frozen" in inspect.signature(tg.make_cache).parameters:
    KINDS.append(("normalized frozen (oracle)", "normalized", {"frozen": True}))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def run(scoring: str, options: dict, max_order: int, buckets: int, toks: torch.Tensor) -> dict:
    cache = tg.make_cache(max_order, buckets, VOCAB, scoring, MIN_COUNT, toks.device, **options)
    span = len(cache.orders)

    def prefill():
        for s in range(0, toks.numel() - 1, BLOCK):
            s0 = max(0, s - span)
            cache.add(*tg.stream_key_counts(cache, toks[s0:s + BLOCK], max(s - s0, 1)))
    out = dict(prefill=toks.numel() / seconds(prefill))
    gen = torch.Generator(device=toks.device).manual_seed(1)
    idx = torch.randint(max_order, toks.numel(), (min(toks.numel(), 1 << 20),), generator=gen, device=toks.device)
    out["probs"] = idx.numel() / seconds(lambda: cache.expert_probs(tg.target_keys(cache, toks, idx, toks[idx])))
    if options.get("hints"):
        out["hint"] = idx.numel() / seconds(lambda: cache.hint(tg.target_keys(cache, toks, idx, toks[idx]), CONFIDENCE))
    out["mib"] = cache.nbytes() / 2**20
    return out


def main():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    buckets = int(os.environ.get("NGRAM_BUCKETS", 4194304))
    gen = torch.Generator(device=device).manual_seed(0)
    toks = (torch.rand(TOKENS, generator=gen, device=device) ** 3 * VOCAB).long()  # Zipf-like: repeats, as text has
    print(f"device:{torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu ({torch.get_num_threads()} threads)'} "
          f"tokens:{TOKENS} buckets:{buckets} block:{BLOCK} min_count:{MIN_COUNT}")
    print("| orders | tables | MiB | prefill tokens/s | expert_probs positions/s | hint positions/s |\n"
          "|---|---|---|---|---|---|")
    for max_order in (7, 16):
        for name, scoring, options in KINDS:
            r = run(scoring, options, max_order, buckets, toks)
            hint = f"{r['hint'] / 1e6:.3g}M" if "hint" in r else "-"
            print(f"| 2..{max_order} | {name} | {r['mib']:.0f} | {r['prefill'] / 1e6:.3g}M | {r['probs'] / 1e6:.3g}M | "
                  f"{hint} |", flush=True)


if __name__ == "__main__":
    main()
