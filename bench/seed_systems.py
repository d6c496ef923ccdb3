"""The mixer heads on one table. Two modes:

BENCH_MODE=one (default), "one table, one model": train ONE model once (a normal train_gpt.py run with MIXER_HEAD=multi,
so the gate exists), then evaluate its exported artifact with every head in fresh LOAD_ARTIFACT runs; the row's
variables are set explicitly, and explicit variables win over the settings stored in the artifact. Rows (names for
BENCH_ROWS):
    none        neural only
    entropy7    entropy-gated backoff, orders 2..7, NGRAM_ENT_CENTER at its default
    entropy16   the same, orders 2..16
    entropy9    entropy-gated backoff, orders 2..9, per-order centers 2.6,2.8,3.0,3.2,3.5,3.8,4.2,4.5 (the seed's)
    multi       the learned gate at the trained NGRAM_MAX_ORDER (the gate has one output per trained order), as it
                runs by default: the entropy head's weights as its prior, trained online on each scored chunk; the
                training run's own score-first evaluation, so it costs no extra pass
    multi_static  the same gate without its online training (MIXER_ONLINE_LR=0): the prior plus what training taught it
    tilt7       token tilt, orders 2..7
    tilt16      token tilt, orders 2..16
Columns, each from the run's summary (logs/<RUN_ID>.summary.json): score-first val_bpb (scores.legal_ttt), its gain
over the none row (over the artifact's sliding-window val_bpb, scores.sliding, which is also neural only, when none
is skipped), the audit's max |sum - 1| over the vocabulary (audit), and the evaluation seconds (compliance
eval_seconds: loading, round-trip, sliding window and the score-first pass).
TTT is off in every row (TTT_EPOCHS=0); BENCH_TTT=<epochs> turns it on for all of them.

BENCH_MODE=systems: each seed system trained and evaluated as its own run, with our scoring (normalized, leave-one-out
oracle) and the seeds' (hashed_target, oracle without leave-one-out); BENCH_ROWS picks systems by their key.

Commands:
    python3 bench/seed_systems.py                       # full-size runs (GPU; BENCH_NPROC=8 for 8 GPUs)
    DATA_PATH=data/datasets/docs_sp1024 TOKENIZER_PATH=../shared/data/fineweb_1024_bpe.model \\
      PRESET=smoke NUM_LAYERS=4 MODEL_DIM=128 ITERATIONS=300 TRAIN_BATCH_TOKENS=8192 EVAL_MAX_TOKENS=131072 \\
      EVAL_CHUNK_TOKENS=32768 NGRAM_BUCKETS=1048576 NGRAM_PREFILL_TOKENS=4000000 python3 bench/seed_systems.py
                                                        # CPU-sized: ~8 min on one core (training ~5 min, then
                                                        # ~30 s per LOAD_ARTIFACT row); with ITERATIONS=60
                                                        # EVAL_MAX_TOKENS=65536 EVAL_CHUNK_TOKENS=16384: ~3.5 min
(the README's docs corpus, from the repository root; relative DATA_PATH, TOKENIZER_PATH and BENCH_ARTIFACT are
resolved from where the bench starts, since its runs happen in a work folder). On a CPU, train_gpt.py runs one
thread unless OMP_NUM_THREADS says otherwise (two threads on two busy cores were ~5x slower).
Any train_gpt.py variable in the environment (or in BENCH_BASE="K=V ...") applies to every run, and a row's own
variables win over it; in systems mode BENCH_BASE wins over a system's variables (e.g. a smaller EVAL_CHUNK_TOKENS
on a CPU). BENCH_WORKDIR keeps the logs and the artifact there (default: a temporary folder, removed);
BENCH_ARTIFACT=<path.ptz> skips the training run and evaluates that artifact (multi then gets its own run). The
LOAD_ARTIFACT runs leave out model-shape variables (the artifact fixes them; train_gpt.py refuses them).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402

CENTER_DEFAULT = ",".join(tg.fmt_num(x) for x in tg.KNOB_BY_ENV["NGRAM_ENT_CENTER"].default)
SEED_CENTERS = "2.6,2.8,3.0,3.2,3.5,3.8,4.2,4.5"
HEAD_ROWS = {  # name: (description, variables of the LOAD_ARTIFACT run); multi comes from the training run
    "none": ("neural only", "MIXER_HEAD=none"),
    "entropy7": ("entropy backoff 2..7", f"MIXER_HEAD=entropy NGRAM_MAX_ORDER=7 NGRAM_ENT_CENTER={CENTER_DEFAULT}"),
    "entropy16": ("entropy backoff 2..16", f"MIXER_HEAD=entropy NGRAM_MAX_ORDER=16 NGRAM_ENT_CENTER={CENTER_DEFAULT}"),
    "entropy9": ("entropy backoff 2..9, per-order centers",
                 f"MIXER_HEAD=entropy NGRAM_MAX_ORDER=9 NGRAM_ENT_CENTER={SEED_CENTERS}"),
    "multi": ("learned gate, orders as trained", None),
    "multi_static": ("learned gate without online training", "MIXER_HEAD=multi MIXER_ONLINE_LR=0"),
    "tilt7": ("token tilt 2..7", "MIXER_HEAD=tilt NGRAM_MAX_ORDER=7"),
    "tilt16": ("token tilt 2..16", "MIXER_HEAD=tilt NGRAM_MAX_ORDER=16"),
}
# the seeds' gate: trained against the frozen oracle, no prior, no online training (our default learns online)
SEED_GATE = "MIXER_HEAD=multi MIXER_LOSS_WEIGHT=0.1 MIXER_GATE_PRIOR=0 MIXER_ONLINE_LR=0"
SYSTEMS = {  # name: (description, variables of the training run)
    "neural": ("neural only (ablation)", "MIXER_HEAD=none"),
    "entropy_q_ttt": ("entropy-gated backoff 2-7 + drift-free Q-only TTT",
                      "MIXER_HEAD=entropy MIXER_LOSS_WEIGHT=0 NGRAM_MAX_ORDER=7 TTT_PARAMS=q TTT_LR=3e-5 TTT_EPOCHS=1 "
                      "EVAL_CHUNK_TOKENS=1048576"),
    "gate7": ("learned 7-expert gate, frozen oracle, backoff TTT", f"{SEED_GATE} NGRAM_MAX_ORDER=7 TTT_EPOCHS=1"),
    "gate7_lr": ("the same, MATRIX_LR=0.03 TTT_EPOCHS=0", f"{SEED_GATE} NGRAM_MAX_ORDER=7 MATRIX_LR=0.03 TTT_EPOCHS=0"),
    "gate7_noloo": ("learned 7-expert gate without leave-one-out (ablation)",
                    f"{SEED_GATE} NGRAM_MAX_ORDER=7 TTT_EPOCHS=1 NGRAM_ORACLE_LOO=0"),
    "order16": ("order-16 oracle, 16 experts, complementary, eval prefill",
                f"{SEED_GATE} NGRAM_MAX_ORDER=16 COMPLEMENT_ALPHA=0.5 COMPLEMENT_THRESHOLD=0.3 MIXER_LOSS_WEIGHT=0.15 "
                "TTT_EPOCHS=1 NGRAM_EVAL_PREFILL=train"),
    "entropy9_s32": ("order-adaptive 9-gram entropy backoff, stride 32",
                     f"MIXER_HEAD=entropy MIXER_LOSS_WEIGHT=0 NGRAM_MAX_ORDER=9 NGRAM_ENT_CENTER={SEED_CENTERS} "
                     "EVAL_STRIDE=32"),
    "tilt": ("token tilt 2..7 (normalized only)", "MIXER_HEAD=tilt MIXER_LOSS_WEIGHT=0 NGRAM_MAX_ORDER=7"),
}
VARIANTS = {"normalized": "", "hashed_target": "NGRAM_SCORING=hashed_target NGRAM_ORACLE_LOO=0"}


def parse_env(text: str) -> dict:
    return dict(item.split("=", 1) for item in text.split())


def run(env: dict, workdir: Path, nproc: int) -> dict:
    """One train_gpt.py run in workdir: its summary (logs/<RUN_ID>.summary.json) and "wall", or {"wall", "error": its
    last stderr line}."""
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                              if nproc > 1 else []) + [str(ROOT / "train_gpt.py")]
    env = os.environ | env
    env |= {k: str(Path(env[k]).resolve()) for k in ("DATA_PATH", "TOKENIZER_PATH", "LOAD_ARTIFACT") if env.get(k)}
    if "LOAD_ARTIFACT" in env:
        env = {k: v for k, v in env.items() if k not in tg.SHAPE_KNOBS}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        return {"wall": wall, "error": (proc.stderr.strip().splitlines() or ["?"])[-1].removeprefix("error: ")}
    return json.loads((workdir / "logs" / f"{env['RUN_ID']}.summary.json").read_text()) | {"wall": wall}


def bpb(r: dict, label: str) -> float:
    return r["scores"][label]["val_bpb"]


def audit(r: dict) -> str:
    """The n-gram audit's max |sum - 1| over the vocabulary ("-" without a mixer: nothing audited)."""
    return str(r.get("audit", {}).get("max_abs_sum_err", "-"))


def selected(names) -> list[str]:
    """BENCH_ROWS (comma-separated names; all when unset), in the table's order."""
    chosen = {n.strip() for n in os.environ.get("BENCH_ROWS", "").split(",") if n.strip()} or set(names)
    if chosen - set(names):
        sys.exit(f"BENCH_ROWS: unknown {sorted(chosen - set(names))}; choose from {list(names)}")
    return [n for n in names if n in chosen]


def one_model(base: dict, workdir: Path, nproc: int) -> None:
    rows = selected(HEAD_ROWS)
    ttt = {"TTT_EPOCHS": os.environ.get("BENCH_TTT", "0")}
    train, artifact = None, os.environ.get("BENCH_ARTIFACT")
    if artifact:
        print(f"model: {artifact} (BENCH_ARTIFACT: no training run; multi is evaluated like the other rows)")
    else:
        train = run(base | ttt | {"MIXER_HEAD": "multi", "RUN_ID": "seed_train"}, workdir, nproc)
        if "error" in train:
            sys.exit(f"training run failed after {train['wall']:.0f}s: {train['error']}")
        artifact = str(workdir / "logs" / "seed_train.ptz")
        order = tg.load_hyperparameters({k: v for k, v in (os.environ | base).items() if k in tg.KNOB_BY_ENV})
        where = artifact if os.environ.get("BENCH_WORKDIR") else "removed at the end (BENCH_WORKDIR keeps it)"
        print(f"model: trained once with MIXER_HEAD=multi orders 2..{order.ngram_max_order} in {train['wall']:.0f}s "
              f"(wall, incl. its own evaluation = the multi row); artifact {where}", flush=True)
    print(f"TTT_EPOCHS={ttt['TTT_EPOCHS']} in every row")
    print("| row | head | score-first val_bpb | gain over none | audit max abs(sum-1) | eval seconds | run wall s |\n"
          "|---|---|---|---|---|---|---|")
    results, neural = {}, None
    for name in rows:
        desc, variables = HEAD_ROWS[name]
        if variables is None and train is not None:
            r = train
        else:
            r = run(base | ttt | parse_env(variables or "MIXER_HEAD=multi") | {"LOAD_ARTIFACT": artifact,
                                                                               "RUN_ID": f"seed_{name}"}, workdir, nproc)
        if "error" in r:
            print(f"| {name} | {desc} | error: {r['error']} | | | | {r['wall']:.0f} |", flush=True)
            continue
        results[name] = score = bpb(r, "legal_ttt")
        neural = neural or (r["result"]["quant"], bpb(r, "roundtrip"), bpb(r, "sliding"))
        reference = results.get("none", neural[2])  # none comes first when selected
        wall = "(training run)" if r is train else f"{r['wall']:.0f}"
        print(f"| {name} | {desc} | {score:.4f} | {reference - score:+.4f} | {audit(r)} | "
              f"{r['compliance']['eval_seconds']:.1f} | {wall} |", flush=True)
    if neural:
        print(f"the artifact, neural only: {neural[0]} round-trip val_bpb {neural[1]:.4f}, sliding window {neural[2]:.4f}"
              + ("" if "none" in results else " (the gain column is over this sliding-window value: none was not run)"))


def systems(base: dict, workdir: Path, nproc: int) -> None:
    print("| system | scoring | round-trip val_bpb (neural) | score-first val_bpb | audit max abs(sum-1) | "
          "eval seconds | verdict |\n|---|---|---|---|---|---|---|")
    for name in selected(SYSTEMS):
        desc, system = SYSTEMS[name]
        for scoring, variant in VARIANTS.items():
            if scoring == "hashed_target" and ("MIXER_HEAD=none" in system or "ablation" in desc or "tilt" in system):
                continue  # nothing to compare (no mixer, an ablation), or not allowed (tilt needs exact counts)
            r = run(parse_env(system) | parse_env(variant) | base | {"RUN_ID": f"system_{name}_{scoring}"}, workdir,
                    nproc)
            if "error" in r:
                print(f"| {desc} | {scoring} | error: {r['error']} | | | | |", flush=True)
                continue
            bad = [k for k, v in r["compliance"]["verdicts"].items() if v == "FAIL"]
            print(f"| {desc} | {scoring} | {bpb(r, 'roundtrip'):.4f} ({r['result']['quant']}) | "
                  f"{bpb(r, 'legal_ttt'):.4f} | {audit(r)} | {r['compliance']['eval_seconds']:.1f} | "
                  f"{'FAIL: ' + ', '.join(bad) if bad else 'PASS'} |", flush=True)


def main():
    base, nproc = parse_env(os.environ.get("BENCH_BASE", "")), int(os.environ.get("BENCH_NPROC", 1))
    mode = os.environ.get("BENCH_MODE", "one")
    if mode not in ("one", "systems"):
        sys.exit(f"BENCH_MODE={mode!r}: use one (default) or systems")
    shown = {k: v for k, v in os.environ.items() if k in tg.KNOB_BY_ENV} | base
    print(f"mode:{mode} nproc:{nproc} base: {' '.join(f'{k}={v}' for k, v in shown.items()) or '(defaults)'}")
    keep = os.environ.get("BENCH_WORKDIR")
    with tempfile.TemporaryDirectory(prefix="seed_systems_") as tmp:
        workdir = Path(keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        {"one": one_model, "systems": systems}[mode](base, workdir, nproc)


if __name__ == "__main__":
    main()
