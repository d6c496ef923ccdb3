"""Which weights to export: raw, EMA or SWA, and whether FINAL_WEIGHTS=auto (the lowest loss on held-back training
tokens, inside the clock) picks the one that scores best on validation. Trains one model per (steps, seed) with
train_gpt's own train(), keeps every candidate choose_final_weights scored, then evaluates each on validation.

    python3 bench/final_weights.py                       # CPU-sized, the docs corpus: ~25 min on one core
    BENCH_STEPS=300 BENCH_SEEDS=1337 python3 bench/final_weights.py

Model (CPU): PRESET=smoke with NUM_LAYERS=4 MODEL_DIM=128 TRAIN_SEQ_LEN=256 TRAIN_BATCH_TOKENS=2048 MIXER_HEAD=none
on the README's docs corpus (DATA_PATH=data/datasets/docs_sp1024, TOKENIZER_PATH=../shared/data/fineweb_1024_bpe.model),
SWA and EMA at train_gpt's defaults (SWA_EVERY=50, SWA_START_LRMUL=0.2, EMA_DECAY=0.997) and the default
FINAL_SELECT_TOKENS. Any train_gpt knob in the environment overrides these.
BENCH_STEPS (300,1200): ITERATIONS per row group; BENCH_SEEDS (1337,42); BENCH_VAL_TOKENS (131072): validation
targets scored (plain eval, stride = seq_len, neural only, before quantization).
Columns: held-back loss (nats, what auto compares), validation val_bpb, and auto's pick against the best on
validation (regret: how much val_bpb the pick gave away).
"""
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402

DEFAULTS = dict(PRESET="smoke", DATA_PATH=str(ROOT / "data/datasets/docs_sp1024"),
                TOKENIZER_PATH=str(ROOT.parent / "shared/data/fineweb_1024_bpe.model"), NUM_LAYERS="4",
                MODEL_DIM="128", TRAIN_SEQ_LEN="256", TRAIN_BATCH_TOKENS="2048", MAX_WALLCLOCK_SECONDS="0",
                MIXER_HEAD="none", QUANT_METHOD="rtn", TRAIN_LOG_EVERY="100", SWA_EVERY="50",
                FINAL_SELECT_TOKENS=str(tg.KNOB_BY_ENV["FINAL_SELECT_TOKENS"].default))
STEPS = [int(s) for s in os.environ.get("BENCH_STEPS", "300,1200").split(",")]
SEEDS = [int(s) for s in os.environ.get("BENCH_SEEDS", "1337,42").split(",")]
VAL_TOKENS = int(os.environ.get("BENCH_VAL_TOKENS", 131072))


def log(msg, console=True):
    if console:
        print(msg, file=sys.stderr, flush=True)


def trained_candidates(a) -> tuple[dict, dict]:
    """Train once; returns ({name: weights} of every candidate, the choice train() made)."""
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), log, "final_weights")
    torch.manual_seed(a.seed)
    model = tg.build_model(tg.ModelConfig.from_args(a), rt.device)
    plan = tg.quantized_roles(tg.parameter_roles(model), a)
    tr = tg.Trainer(model, tg.build_optimizers(model, a), tg.MixerConfig.from_args(a), a, rt, tg.grad_accum_steps(a, 1))
    kept, choose = {}, tg.choose_final_weights

    def keep_then_choose(model, averager, *args):
        kept.update({k: {n: t.clone() for n, t in w.items()} for k, (w, _) in averager.candidates(model).items()})
        return choose(model, averager, *args)
    tg.choose_final_weights = keep_then_choose
    try:
        tg.train(tr, None, plan)
    finally:
        tg.choose_final_weights = choose
    return kept, rt.summary["train"]["final_weights"]


def main():
    env = DEFAULTS | {k: v for k, v in os.environ.items() if k in tg.KNOB_BY_ENV}
    rows = []
    for steps in STEPS:
        for seed in SEEDS:
            a = tg.load_hyperparameters(env | dict(ITERATIONS=str(steps), SEED=str(seed)))
            kept, choice = trained_candidates(a)
            model = tg.build_model(tg.ModelConfig.from_args(a), torch.device("cpu"))
            sp = tg.load_tokenizer(a.tokenizer_path, a.vocab_size)
            val = tg.scored_part(tg.load_validation_tokens(a.data_path, a.vocab_size), VAL_TOKENS)
            ev = tg.Evaluator(model, tg.MixerConfig.from_args(a), tg.ByteTables.from_tokenizer(sp, a.vocab_size),
                              val, a.train_seq_len, a.eval_batch_seqs, 0, 1, lambda m: None)
            bpb = {}
            for name, weights in kept.items():
                model.load_state_dict(weights)
                bpb[name] = tg.evaluate(ev, name, a.train_seq_len, val.numel()).val_bpb
            best = min(bpb, key=bpb.get)
            rows += [(steps, seed, name, choice["held_back_loss"][name], bpb[name],
                      "auto" if name == choice["chosen"] else "", "best" if name == best else "",
                      bpb[choice["chosen"]] - bpb[best]) for name in kept]
            log(f"steps {steps} seed {seed}: {bpb} auto:{choice['chosen']} best:{best}")
    print(f"\nheld-back tokens: {env['FINAL_SELECT_TOKENS']}; validation targets: {VAL_TOKENS}; "
          f"torch {torch.__version__}\n")
    print("| steps | seed | weights | held-back loss | val_bpb | auto's pick | best on val | regret |")
    print("|---|---|---|---|---|---|---|---|")
    for steps, seed, name, loss, v, pick, best, regret in rows:
        print(f"| {steps} | {seed} | {name} | {loss:.4f} | {v:.4f} | {pick} | {best} | {regret:.4f} |")


if __name__ == "__main__":
    main()
