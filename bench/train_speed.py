"""Training step speed: tokens/s, ms/step and peak memory for MIXER_HEAD=none vs multi, measured in one run.

    python3 bench/train_speed.py                   # the default 11-layer config (GPU)
    PRESET=smoke python3 bench/train_speed.py      # tiny, on CPU
Other knobs come from the environment as in train_gpt.py (e.g. TRAIN_BATCH_TOKENS, NGRAM_MAX_ORDER).
"""
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

STEPS, WARM = int(os.environ.get("BENCH_STEPS", 10)), int(os.environ.get("BENCH_WARM", 3))


class RandomStream:
    """Stands in for TokenStream: random tokens, so no data is needed."""
    offset, total = 0, 1 << 62

    def __init__(self, vocab, seed):
        self.rng, self.vocab = np.random.default_rng(seed), vocab

    def take(self, n):
        return self.rng.integers(0, self.vocab, n).astype(np.uint16)


def measure(head: str, env: dict) -> dict:
    a = tg.load_hyperparameters(env | {"MIXER_HEAD": head})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rt = tg.Runtime(0, 1, 0, device, lambda m: None, "bench")
    torch.manual_seed(0)
    model = tg.build_model(tg.ModelConfig.from_args(a), device)
    opts = tg.build_optimizers(model, a)
    oracle = None
    if tg.needs_oracle(a):  # a prefilled oracle, so lookups hit populated tables as in a real run
        oracle = tg.new_cache(a, device)
        toks = torch.from_numpy(RandomStream(a.vocab_size, 1).take(2_000_000).astype(np.int64)).to(device)
        oracle.add(oracle.keys(toks[:-1], toks[1:]))
    stream, accum = RandomStream(a.vocab_size, 0), tg.grad_accum_steps(a, 1)
    mixer = tg.MixerConfig.from_args(a)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(WARM + STEPS):
        if i == WARM:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        tg.train_step(model, opts, stream, oracle, mixer, a, rt, accum, 1.0, i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1000 / STEPS
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return dict(head=head, ms=ms, tps=a.train_batch_tokens / ms * 1000, peak=peak)


def main():
    env = {k: v for k, v in os.environ.items() if k in tg.KNOB_BY_ENV}
    a = tg.load_hyperparameters(env)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device:{dev} layers:{a.num_layers} dim:{a.model_dim} batch_tokens:{a.train_batch_tokens} "
          f"seq:{a.train_seq_len} orders:2..{a.ngram_max_order} steps:{STEPS} (after {WARM} warm-up)")
    rows = [measure(h, env) for h in ("none", "multi")]
    print("| MIXER_HEAD | ms/step | tokens/s | peak GiB | vs none |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['head']} | {r['ms']:.1f} | {r['tps']:,.0f} | {r['peak']:.1f} | {r['ms'] / rows[0]['ms'] - 1:+.1%} |")


if __name__ == "__main__":
    main()
