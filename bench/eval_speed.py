"""Evaluation speed: scored tokens/s of the score-first loop, and its split into model forward, n-gram work and TTT.

The split comes from three runs over the same tokens in one process: neural only (MIXER_HEAD=none, no TTT),
+ the n-gram mixer, + TTT; each difference is that component's cost.
    python3 bench/eval_speed.py                                     # stride 64, orders 2..16, default model (GPU)
    PRESET=smoke BENCH_TOKENS=20000 python3 bench/eval_speed.py     # CPU-sized
"""
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

TOKENS = int(os.environ.get("BENCH_TOKENS", 2_000_000))


def timed_eval(env: dict, tokens: torch.Tensor, device) -> tuple[float, float]:
    a = tg.load_hyperparameters(env)
    torch.manual_seed(0)
    model = tg.build_model(tg.ModelConfig.from_args(a), device)
    tables = tg.ByteTables(torch.ones(a.vocab_size, dtype=torch.long), torch.zeros(a.vocab_size, dtype=torch.bool),
                           torch.zeros(a.vocab_size, dtype=torch.bool))
    seq_len = a.eval_seq_len or a.train_seq_len
    ev = tg.Evaluator(model, tg.MixerConfig.from_args(a), tables, tokens, seq_len, a.eval_batch_seqs, 0, 1, lambda m: None)
    cache = tg.new_cache(a, device) if a.mixer_head != "none" else None
    ttt = None
    if a.ttt_epochs:
        params = tg.ttt_parameters(model, a)
        opt = tg.build_ttt_optimizer(params, a)
        ttt = lambda t0, t1: tg.ttt_on_chunk(ev, opt, params, t0, t1, a)
    t0 = time.perf_counter()
    res = tg.evaluate(ev, "bench", a.eval_stride, a.eval_chunk_tokens, cache, ttt)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, res.val_bpb


def main():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = {"NGRAM_MAX_ORDER": "16"} | {k: v for k, v in os.environ.items() if k in tg.KNOB_BY_ENV}
    a = tg.load_hyperparameters(env)
    gen = torch.Generator().manual_seed(0)
    tokens = (torch.rand(TOKENS + 1, generator=gen) ** 3 * a.vocab_size).long().to(device)
    print(f"device:{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} tokens:{TOKENS} "
          f"stride:{a.eval_stride} seq:{a.eval_seq_len or a.train_seq_len} orders:2..{a.ngram_max_order} "
          f"scoring:{a.ngram_scoring} layers:{a.num_layers} dim:{a.model_dim} chunk:{a.eval_chunk_tokens}")
    runs = [("forward only", {"MIXER_HEAD": "none", "TTT_EPOCHS": "0"}),
            ("+ n-gram mixer", {"TTT_EPOCHS": "0"}),
            ("+ TTT (1 epoch)", {"TTT_EPOCHS": "1"})]
    print("| run | seconds | scored tokens/s | component | component seconds |\n|---|---|---|---|---|")
    prev = 0.0
    for (name, extra), comp in zip(runs, ("model forward", "n-gram work", "TTT")):
        secs, _ = timed_eval(env | extra, tokens, device)
        print(f"| {name} | {secs:.2f} | {TOKENS / secs:,.0f} | {comp} | {secs - prev:.2f} |")
        prev = secs


if __name__ == "__main__":
    main()
