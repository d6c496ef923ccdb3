"""Run every seed system this project reproduces, as we run it (normalized scoring, leave-one-out oracle) and with
the seeds' original scoring (hashed_target, oracle without leave-one-out), and print one table (the README's
seed-systems table comes from this).

    python3 bench/seed_systems.py                      # each system at its full configuration (8 GPUs: BENCH_NPROC=8)
    BENCH_BASE="PRESET=smoke DATA_PATH=... EVAL_MAX_TOKENS=262144" python3 bench/seed_systems.py   # CPU-sized
BENCH_BASE's settings override the systems' own (e.g. a smaller chunk when only a few chunks are evaluated).
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = {
    "neural only (ablation)": "MIXER_HEAD=none",
    "entropy-gated backoff 2-7 + drift-free Q-only TTT":
        "MIXER_HEAD=entropy MIXER_LOSS_WEIGHT=0 NGRAM_MAX_ORDER=7 TTT_PARAMS=q TTT_LR=3e-5 TTT_EPOCHS=1 "
        "EVAL_CHUNK_TOKENS=1048576",
    "learned 7-expert gate, frozen oracle, backoff TTT": "MIXER_HEAD=multi NGRAM_MAX_ORDER=7 TTT_EPOCHS=1",
    "the same, MATRIX_LR=0.03 TTT_EPOCHS=0": "MIXER_HEAD=multi NGRAM_MAX_ORDER=7 MATRIX_LR=0.03 TTT_EPOCHS=0",
    "learned 7-expert gate without leave-one-out (ablation)":
        "MIXER_HEAD=multi NGRAM_MAX_ORDER=7 TTT_EPOCHS=1 NGRAM_ORACLE_LOO=0",
    "order-16 oracle, 16 experts, complementary, eval prefill":
        "NGRAM_MAX_ORDER=16 COMPLEMENT_ALPHA=0.5 COMPLEMENT_THRESHOLD=0.3 MIXER_LOSS_WEIGHT=0.15 TTT_EPOCHS=1 "
        "NGRAM_EVAL_PREFILL=train",
    "order-adaptive 9-gram entropy backoff, stride 32":
        "MIXER_HEAD=entropy MIXER_LOSS_WEIGHT=0 NGRAM_MAX_ORDER=9 NGRAM_ENT_CENTER=2.6,2.8,3.0,3.2,3.5,3.8,4.2,4.5 "
        "EVAL_STRIDE=32",
}

VARIANTS = {"normalized": {}, "hashed_target": {"NGRAM_SCORING": "hashed_target", "NGRAM_ORACLE_LOO": "0"}}


def parse_env(text: str) -> dict:
    return dict(item.split("=", 1) for item in text.split())


def run(env: dict, nproc: int) -> dict:
    """Run train_gpt.py once in a scratch folder; return the fields of its final lines."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                                  if nproc > 1 else []) + [str(ROOT / "train_gpt.py")]
        proc = subprocess.run(cmd, cwd=tmp, env=os.environ | env, capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    fields = {}
    for line in proc.stdout.splitlines():
        name, *rest = line.split()
        if name in ("legal_ttt_exact", "ngram_audit", "final_int6_roundtrip_exact"):
            fields[name] = dict(tok.split(":", 1) for tok in rest if ":" in tok)
        if line.startswith("compliance_json"):
            import json
            fields["compliance"] = json.loads(line.split(" ", 1)[1])
    return fields


def main():
    base, nproc = parse_env(os.environ.get("BENCH_BASE", "")), int(os.environ.get("BENCH_NPROC", 1))
    print(f"base: {' '.join(f'{k}={v}' for k, v in base.items()) or '(defaults)'} nproc:{nproc}")
    print("| system | scoring | round-trip val_bpb (neural) | score-first val_bpb | audit max abs(sum-1) | verdict |")
    print("|---|---|---|---|---|---|")
    for name, system in SYSTEMS.items():
        for scoring, variant in VARIANTS.items():
            if scoring == "hashed_target" and ("MIXER_HEAD=none" in system or "ablation" in name):
                continue
            env = parse_env(system) | variant | base
            r = run(env, nproc)
            if "error" in r:
                print(f"| {name} | {scoring} | error: {r['error']} | | | |")
                continue
            audit = r.get("ngram_audit", {}).get("max_abs_sum_err", "-")
            bad = [k for k, v in r["compliance"]["verdicts"].items() if v == "FAIL"]
            print(f"| {name} | {scoring} | {float(r['final_int6_roundtrip_exact']['val_bpb']):.4f} | "
                  f"{float(r['legal_ttt_exact']['val_bpb']):.4f} | {audit} | {'FAIL: ' + ', '.join(bad) if bad else 'PASS'} |",
                  flush=True)


if __name__ == "__main__":
    main()
