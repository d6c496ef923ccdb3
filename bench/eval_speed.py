"""Evaluation speed of the score-first loop: scored tokens/s, where the seconds go, and the full-validation projection.

    python3 bench/eval_speed.py                                   # stride 64, orders 2..16, default model (GPU)
    PRESET=smoke BENCH_TOKENS=20000 python3 bench/eval_speed.py   # CPU-sized: ~1-2 min on 2 cores
On one H200, BENCH_TOKENS=262144 NGRAM_MAX_ORDER=7 took 204 s with a warm compile cache (each row builds and compiles
its own model: cold, add about a minute per row).
On a CPU shared with other work, prefix OMP_NUM_THREADS=1 (two threads on two busy cores spin against each other).
Knobs come from the environment as in train_gpt.py (NGRAM_MAX_ORDER defaults to 16 here); BENCH_TOKENS (2,000,000)
targets are scored: the validation shards of DATA_PATH when present, else Zipf-like random tokens.

Rows, each over the same tokens, with a fresh model (random weights) per row:
  forward only     MIXER_HEAD=none, TTT off
  + entropy head   MIXER_HEAD=entropy (hand-tuned weights, nothing learned), TTT off
  + n-gram mixer   MIXER_HEAD=multi (the default learned gate with its online steps on each scored chunk, built by
                   score_first_gate as the run builds it; its cache is NgramCache, NGRAM_SCORING as set), TTT off
  + tilt head      MIXER_HEAD=tilt (a normalized cache with hints), TTT off
  + TTT            MIXER_HEAD=multi with TTT_EPOCHS=1 (or as set), built by score_first_ttt as the run builds it
                   (TTT_FREEZE_BLOCKS / TTT_PARAMS decide which weights train)
Each row first runs warm_up_eval (what evaluate_artifact runs before its clock: every shape, the mixer and a TTT
step on random tokens), so compilation is not charged to the timed pass. Columns: the pass's seconds and scored
tokens/s; its split, timed inside the pass (synchronized at each boundary on CUDA): model forward (score_chunk
minus mixed_nll), mixed_nll (softmax + n-gram lookups + head), cache update (add_chunk_to_cache), the gate's
online steps (gate_on_chunk), TTT; and the
projection for the full FineWeb validation (62M targets) on 8 GPUs at the measured rate: every rank scores 1/8
of the windows and trains on 1/8 of the TTT batch, but counts every chunk into its cache, so
projection = (seconds - cache update) / 8 + cache update, scaled to 62M targets.
"""
import contextlib
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

TOKENS = int(os.environ.get("BENCH_TOKENS", 2_000_000))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ROWS = [("forward only", {"MIXER_HEAD": "none", "TTT_EPOCHS": "0"}),
        ("+ entropy head", {"MIXER_HEAD": "entropy", "TTT_EPOCHS": "0"}),
        ("+ n-gram mixer", {"MIXER_HEAD": "multi", "TTT_EPOCHS": "0"}),
        ("+ tilt head", {"MIXER_HEAD": "tilt", "TTT_EPOCHS": "0"}),
        ("+ TTT", {"MIXER_HEAD": "multi"})]


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def timed(seconds: dict, patches: dict):
    """Replace module functions of train_gpt (evaluate looks them up by name) with timed wrappers for a while."""
    def wrap(name, fn):
        def run(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                seconds[name] += time.perf_counter() - t0
        return run
    originals = {attr: getattr(tg, attr) for attr in patches}
    for attr, name in patches.items():
        setattr(tg, attr, wrap(name, originals[attr]))
    try:
        yield wrap
    finally:
        for attr, fn in originals.items():
            setattr(tg, attr, fn)


def timed_eval(env: dict, tokens: torch.Tensor) -> dict:
    a = tg.load_hyperparameters(env)
    rt = tg.Runtime(0, 1, 0, DEVICE, lambda msg, console=True: None, "bench")
    tables = tg.ByteTables(torch.ones(a.vocab_size, dtype=torch.long), torch.zeros(a.vocab_size, dtype=torch.bool),
                           torch.zeros(a.vocab_size, dtype=torch.bool))  # 1 byte per token: bpb is not reported
    torch.manual_seed(0)
    model = tg.build_model(tg.ModelConfig.from_args(a), DEVICE)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tg.warm_up_eval(model, a, rt, tables)  # trains on random tokens when TTT is on: restore the weights after
    model.load_state_dict(initial)
    ev = tg.Evaluator(model, tg.MixerConfig.from_args(a), tables, tokens, a.eval_seq_len or a.train_seq_len,
                      a.eval_batch_seqs, 0, 1, rt.log)
    cache = tg.new_cache(a, DEVICE) if tg.MixerConfig.from_args(a).uses_cache else None
    seconds = defaultdict(float)
    with timed(seconds, {"score_chunk": "score", "mixed_nll": "mixed_nll", "add_chunk_to_cache": "cache",
                         "gate_on_chunk": "gate"}) as wrap:
        ttt = tg.score_first_ttt(ev, a)
        sync()
        t0 = time.perf_counter()
        tg.evaluate(ev, "bench", a.eval_stride, a.eval_chunk_tokens, cache, ttt and wrap("ttt", ttt),
                    gate_step=tg.score_first_gate(ev))
        sync()
        seconds["total"] = time.perf_counter() - t0
    seconds["forward"] = seconds["score"] - seconds["mixed_nll"]
    return seconds


def validation_tokens(a) -> tuple[torch.Tensor, str]:
    try:
        val = tg.load_validation_tokens(a.data_path, a.vocab_size)
        if val.numel() > TOKENS:
            return val[:TOKENS + 1], a.data_path
    except tg.UserError:
        pass
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(TOKENS + 1, generator=gen) ** 3 * a.vocab_size).long(), "Zipf-like random tokens"


def main():
    env = {"NGRAM_MAX_ORDER": "16"} | {k: v for k, v in os.environ.items() if k in tg.KNOB_BY_ENV}
    a = tg.load_hyperparameters(env)
    tokens, source = validation_tokens(a)
    n = tokens.numel() - 1
    tokens = tokens.to(DEVICE)
    print(f"device:{torch.cuda.get_device_name() if DEVICE.type == 'cuda' else f'cpu ({torch.get_num_threads()} threads)'} "
          f"targets:{n} from:{source} stride:{a.eval_stride} seq:{a.eval_seq_len or a.train_seq_len} "
          f"orders:2..{a.ngram_max_order} scoring:{a.ngram_scoring} buckets:{a.ngram_buckets} layers:{a.num_layers} "
          f"dim:{a.model_dim} chunk:{a.eval_chunk_tokens} batch_seqs:{a.eval_batch_seqs} ttt_epochs:{a.ttt_epochs} "
          f"ttt_params:{a.ttt_params} ttt_freeze_blocks:{a.ttt_freeze_blocks}")
    print("| row | seconds | scored tokens/s | model forward s | mixed_nll s | cache update s | gate online s | TTT s | "
          "full FineWeb on 8 GPUs, projected s |\n|---|---|---|---|---|---|---|---|---|")
    for name, extra in ROWS:
        if name == "+ TTT" and a.ttt_epochs == 0:
            extra = extra | {"TTT_EPOCHS": "1"}
        if name == "+ tilt head" and a.ngram_scoring != "normalized":
            print(f"| {name} | skipped: the tilt needs NGRAM_SCORING=normalized | | | | | | | |")
            continue
        s = timed_eval(env | extra, tokens)
        projected = ((s["total"] - s["cache"]) / 8 + s["cache"]) * tg.FINEWEB_VAL_TARGETS / n
        print(f"| {name} | {s['total']:.2f} | {n / s['total']:,.0f} | {s['forward']:.2f} | {s['mixed_nll']:.2f} | "
              f"{s['cache']:.2f} | {s['gate']:.2f} | {s['ttt']:.2f} | {projected:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
