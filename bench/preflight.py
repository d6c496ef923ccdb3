"""Preflight: prove a configuration on one GPU in under 9 minutes and project the challenge's 8-GPU run.

    python3 bench/preflight.py                     # one H100/H200, the configuration given: ~8-9 min
    DATA_PATH=data/datasets/docs_sp1024 TOKENIZER_PATH=../shared/data/fineweb_1024_bpe.model python3 bench/preflight.py
    PREFLIGHT_DRY=1 python3 bench/preflight.py     # dry mode (automatic without a GPU): tiny sizes on CPU, ~1-2 min
The configuration to prove comes from the environment exactly as train_gpt.py reads it (the defaults unless knobs
are set). Preflight's own knobs: PREFLIGHT_OUT (logs/preflight.json), PREFLIGHT_BUDGET (seconds for all stages:
540 on a GPU, 300 dry), PREFLIGHT_TRAIN_SECONDS (the capped run's training clock: 90 on a GPU, 8 dry),
PREFLIGHT_EVAL_TOKENS (validation targets the capped run scores: 262,144 on a GPU, 8,192 dry).

Stages, in this order, each in its own process with its share of the budget (stopped at it and reported FAIL,
with the figures it had), each reported even when an earlier one failed:
  machine     GPU, memory, torch/CUDA, FlashAttention 3, free disk, DATA_PATH's shards and TOKENIZER_PATH
  paths       the real main() at PRESET=smoke sizes on the device, on DATA_PATH: MIXER_HEAD=multi (GPTQ, TTT),
              entropy and tilt in parallel, then LOAD_ARTIFACT of the multi artifact, which must score the same
  speed       the configuration's training step with the mixer off and on (compile, then timed steps: ms/step,
              tokens/s, peak memory), the n-gram prefill rate on real training tokens
  run         train_gpt.py itself, training capped at PREFLIGHT_TRAIN_SECONDS, calibrated, fitted, exported,
              re-loaded and scored on PREFLIGHT_EVAL_TOKENS validation targets (its summary.json is read): steps,
              the fit, export cost, bytes, audit, and each evaluation pass's warm rate and full-split projection
  projection  the challenge's run (8 GPUs, 600 s + 600 s, full validation) from the figures above, and go / no-go
Prints one table (stage, figure, value, status, seconds) and writes the same as JSON to PREFLIGHT_OUT. The exit code
is 0 when every stage ran, whatever the verdict. Stage logs: logs/preflight/.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402

H100_MEMORY_GIB = 80  # the challenge's GPU: a step that needs more than this fails there, even if an H200 holds it
SHARES = {"machine": 0.04, "paths": 0.25, "speed": 0.25}  # of PREFLIGHT_BUDGET; the run gets what is left
LOGS = Path("logs/preflight")


def setting(name: str, real, dry):
    value = os.environ.get(name)
    return type(real)(value) if value else (dry if is_dry() else real)


def is_dry() -> bool:
    return os.environ.get("PREFLIGHT_DRY", "0") not in ("", "0") or not torch.cuda.is_available()


def user_knobs() -> dict[str, str]:
    """The configuration given: knobs set in the environment (dry mode: PRESET=smoke under them)."""
    knobs = {k: v for k, v in os.environ.items() if k in tg.KNOB_BY_ENV}
    return ({"PRESET": "smoke"} if is_dry() else {}) | knobs


def data_knobs() -> dict[str, str]:
    """DATA_PATH and TOKENIZER_PATH as the configuration resolves them (dry mode: the embedded sample by default)."""
    a = tg.load_hyperparameters(user_knobs())
    return {"DATA_PATH": a.data_path, "TOKENIZER_PATH": a.tokenizer_path}


def child_env(knobs: dict[str, str]) -> dict[str, str]:
    """The environment of a train_gpt.py child: ours without any knob or PREFLIGHT_* variable, then knobs."""
    env = {k: v for k, v in os.environ.items() if k not in tg.KNOB_BY_ENV and not k.startswith("PREFLIGHT_")}
    return env | {"PYTHONUNBUFFERED": "1"} | ({"OMP_NUM_THREADS": "1"} if is_dry() else {}) | knobs


class Stage:
    """A stage's figures, written to its JSON file as they come, so a stage stopped at its budget still reports."""

    def __init__(self, out: Path):
        self.out, self.figures, self.status = out, {}, "PASS"

    def __setitem__(self, name, value):
        self.figures[name] = value
        self.out.write_text(json.dumps({"status": self.status, "figures": self.figures}))

    def fail(self, name, why):
        self.status = "FAIL"
        self[name] = why


# ---- stage: machine ----------------------------------------------------------------------------------------------

def stage_machine(st: Stage) -> None:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        st["gpu"], st["gpu_memory_gib"] = props.name, round(props.total_memory / 2**30, 1)
    else:
        st["gpu"] = "none (dry mode: CPU)"
    st["torch"], st["cuda"] = torch.__version__, torch.version.cuda or "none"
    try:
        import flash_attn_interface  # noqa: F401
        st["flash_attention_3"] = "importable"
    except ImportError:
        st["flash_attention_3"] = "not installed (PyTorch SDPA is used)"
    st["free_disk_gib"] = round(shutil.disk_usage(".").free / 2**30, 1)
    paths = data_knobs()
    for split in ("train", "val"):
        try:
            files = tg.list_shards(paths["DATA_PATH"], split)
            st[f"{split}_tokens"] = sum(tg.read_shard(f, mmap=True).size for f in files)
            st[f"{split}_shards"] = len(files)
        except tg.UserError as e:
            st.fail(f"{split}_shards", f"{e} (set DATA_PATH; python3 data/prepare.py builds shards)")
    if Path(paths["TOKENIZER_PATH"]).is_file():
        st["tokenizer"] = paths["TOKENIZER_PATH"]
    else:
        st.fail("tokenizer", f"TOKENIZER_PATH={paths['TOKENIZER_PATH']} not found")


# ---- stage: paths ------------------------------------------------------------------------------------------------

def run_train_gpt(name: str, knobs: dict[str, str]) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(ROOT / "train_gpt.py")], env=child_env(knobs | {"RUN_ID": name}),
                            stdout=open(LOGS / f"{name}.out", "w"), stderr=subprocess.STDOUT)


def finished_summary(name: str, proc: subprocess.Popen) -> dict:
    """The run's summary.json, or an exception carrying the last line it printed."""
    summary = Path("logs", f"{name}.summary.json")
    if proc.wait() != 0 or not summary.is_file():
        lines = (LOGS / f"{name}.out").read_text().strip().splitlines() or ["(no output)"]
        raise RuntimeError(f"exit {proc.returncode}: {lines[-1][:300]} (log: {LOGS / name}.out)")
    return json.loads(summary.read_text())


def audit_line(summary: dict) -> str:
    a = summary.get("audit")
    return "none (no mixer)" if not a else (f"positions:{a['positions']} max_abs_sum_err:{a['max_abs_sum_err']:.1e} "
                                            f"target_independent:{a['target_independent']}")


def stage_paths(st: Stage) -> None:
    """Every head through the real main() at smoke sizes, in parallel; then the multi artifact re-loaded."""
    base = {"PRESET": "smoke"} | data_knobs() | ({"ITERATIONS": "12", "EVAL_MAX_TOKENS": "8192"} if is_dry() else {})
    heads = {"multi": {}, "entropy": {"TTT_EPOCHS": "0"}, "tilt": {"TTT_EPOCHS": "0"}}
    procs = {h: run_train_gpt(f"preflight_{h}", base | {"MIXER_HEAD": h} | extra) for h, extra in heads.items()}
    results = {}
    for head, proc in procs.items():
        try:
            results[head] = s = finished_summary(f"preflight_{head}", proc)
            ok = s["audit"]["max_abs_sum_err"] <= 1e-5 and s["audit"]["target_independent"] == "yes"
            (st.__setitem__ if ok else st.fail)(f"{head}", f"val_bpb:{s['result']['val_bpb']:.4f} {audit_line(s)}")
        except Exception as e:  # one head's failure must not hide the others'
            st.fail(head, str(e))
    if "multi" not in results:
        return st.fail("load_artifact", "skipped: the multi run made no artifact")
    try:
        s = finished_summary("preflight_load", run_train_gpt("preflight_load", {
            "LOAD_ARTIFACT": results["multi"]["artifact"]} | data_knobs()))
        first = results["multi"]["scores"]
        diff = max(abs(s["scores"][k]["val_bpb"] - first[k]["val_bpb"]) for k in ("roundtrip", "sliding", "legal_ttt"))
        # TTT's backward sums in a nondeterministic order on a GPU: equal within 1e-4 there, exactly on a CPU
        tol = 0.0 if is_dry() else 1e-4
        (st.__setitem__ if diff <= tol else st.fail)(
            "load_artifact", f"max |val_bpb - in-run| over roundtrip, sliding, legal_ttt: {diff:.2e} (allowed {tol:g})")
    except Exception as e:
        st.fail("load_artifact", str(e))


# ---- stage: speed ------------------------------------------------------------------------------------------------

def prefill(rt, files, st: Stage) -> tuple:
    """The n-gram counting rate on real training tokens, orders as configured: the oracle's prefill on the clock when
    the configuration trains against one, and the rate at which any cache counts (NGRAM_EVAL_PREFILL=train too)."""
    a = tg.load_hyperparameters(user_knobs())
    cache, limit = tg.new_cache(a, rt.device, frozen=True), setting("PREFLIGHT_PREFILL_TOKENS", 50_000_000, 200_000)
    tg.synchronize(rt)
    t0 = time.perf_counter()
    counted = tg.prefill_ngram_cache(cache, files, min(a.ngram_prefill_tokens or limit, limit), a.vocab_size, rt)
    tg.synchronize(rt)
    st["prefill_tok_per_s"] = round(counted / (time.perf_counter() - t0))
    st["prefill_orders"] = f"2..{a.ngram_max_order} over {counted} training tokens" + (
        "" if tg.MixerConfig.from_args(a).needs_oracle else " (not on this configuration's clock: it trains against no oracle)")
    return cache, counted


def timed_steps(rt, files, head: str, st: Stage, oracle: tuple):
    """Build the model with MIXER_HEAD=head, compile on the first steps, then time more: ms/step, tokens/s, memory."""
    a = tg.load_hyperparameters(user_knobs() | {"MIXER_HEAD": head})
    accum = tg.grad_accum_steps(a, 1)
    torch.manual_seed(a.seed)
    model = tg.build_model(tg.ModelConfig.from_args(a), rt.device)
    tr = tg.Trainer(model, tg.build_optimizers(model, a), tg.MixerConfig.from_args(a), a, rt, accum)
    if tr.mixer.needs_oracle:
        tr.oracle, tr.oracle_tokens = oracle
    loader = tg.BatchLoader(tg.TokenStream(files, a.vocab_size), a.train_batch_tokens // accum, a.train_seq_len, rt)
    warm, steps = (1, 3) if is_dry() else (2, 5)
    t0 = time.perf_counter()
    for _ in range(warm):
        tg.train_step(tr, loader, 1.0, a.muon_momentum)
    tg.synchronize(rt)
    st[f"{head}_compile_s"] = round(time.perf_counter() - t0, 1)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        tg.train_step(tr, loader, 1.0, a.muon_momentum)
        tg.synchronize(rt)
        times.append(time.perf_counter() - t0)
    loader.close()
    ms = 1000 * statistics.median(times)
    st[f"{head}_ms_per_step"] = round(ms, 1)
    st[f"{head}_tok_per_s"] = round(a.train_batch_tokens / ms * 1000)
    if rt.device.type == "cuda":
        st[f"{head}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)


def stage_speed(st: Stage) -> None:
    a = tg.load_hyperparameters(user_knobs())
    device = torch.device("cuda" if not is_dry() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    rt = tg.Runtime(0, 1, 0, device, lambda msg, console=True: None, "preflight_speed")
    files = tg.list_shards(a.data_path, "train")
    st["config"] = (f"layers:{a.num_layers} dim:{a.model_dim} batch_tokens:{a.train_batch_tokens} "
                    f"seq:{a.train_seq_len} accum:{tg.grad_accum_steps(a, 1)} (one GPU)")
    oracle = prefill(rt, files, st)
    for head in dict.fromkeys(["none", a.mixer_head if a.mixer_head != "none" else "multi"]):
        timed_steps(rt, files, head, st, oracle)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # The warm score-first rate is the run stage's: its evaluation compiles before its clock, so measuring it here
    # too would pay the evaluation's compilation twice out of the same 9 minutes.


# ---- stage: run --------------------------------------------------------------------------------------------------

def stage_run(st: Stage) -> None:
    cap, n = setting("PREFLIGHT_TRAIN_SECONDS", 90.0, 8.0), setting("PREFLIGHT_EVAL_TOKENS", 262_144, 8192)
    knobs = user_knobs() | {"MAX_WALLCLOCK_SECONDS": str(cap), "EVAL_MAX_TOKENS": str(n)}
    st["capped_at"] = f"MAX_WALLCLOCK_SECONDS={cap:g} EVAL_MAX_TOKENS={n}"
    s = finished_summary("preflight_run", run_train_gpt("preflight_run", knobs))
    train, fit, scores = s["train"], s["export"], s["scores"]
    st["steps"], st["step_avg_ms"] = train["steps"], round(train["step_avg_ms"], 1)
    st["train_seconds"], st["prefill_seconds"] = round(train["seconds"], 1), round(train["prefill_seconds"], 1)
    st["peak_memory_gib"] = train["peak_memory_mib"] and round(train["peak_memory_mib"] / 1024, 1)
    final = train["final_weights"]
    st["final_weights"] = f"{final['label']} by {final['by']}: held-back loss " + " ".join(
        f"{k}:{v:.4f}" for k, v in final["held_back_loss"].items()) + (
        "" if final["unseen"] else " (the stream wrapped: the held-back tokens were trained on)")
    st["export_fit"] = (f"{fit['method']} k_attn:{fit['k_attn']:.2f} k_mlp:{fit['k_mlp']:.2f} "
                        f"k_embed:{fit['k_embed']:.2f} widen:{fit['widen']:.3f} tries:{fit['tries']}")
    st["export_seconds"] = round(fit["seconds"], 1)
    st["export_cost_bpb"] = round(scores["roundtrip"]["val_bpb"] - scores["prequant"]["val_bpb"], 5)
    st["artifact_bytes"] = s["bytes"]["total"]
    st["audit"] = audit_line(s)
    st["result_val_bpb"] = round(s["result"]["val_bpb"], 5)
    st["sliding_val_bpb"] = round(scores["sliding"]["val_bpb"], 5)
    a = tg.load_hyperparameters(knobs)
    st["eval_tok_per_s"] = {k: round(n / v["seconds"]) for k, v in scores.items() if k != "prequant"}
    st["eval_passes"] = (f"warm; legal_ttt: score-first, stride {a.eval_stride}, head {a.mixer_head}, orders "
                         f"2..{a.ngram_max_order}, TTT epochs {a.ttt_epochs}; sliding: stride {a.eval_stride}")
    st["eval_projection_8gpu_s"] = {k: round(v["projection_8gpu_s"]) for k, v in scores.items() if k != "prequant"}
    if s["bytes"]["total"] > tg.LIMIT_ARTIFACT_BYTES:
        st.fail("artifact", f"{s['bytes']['total']} bytes > {tg.LIMIT_ARTIFACT_BYTES}")


# ---- stage: projection -------------------------------------------------------------------------------------------

def projection(stages: dict) -> tuple[dict, list[str]]:
    """The challenge's run from the measured figures; (figures, what would fail and the knob that fixes it)."""
    speed, run, machine = (stages[k]["figures"] for k in ("speed", "run", "machine"))
    a = tg.load_hyperparameters(user_knobs())
    fig, why = {}, []
    step_ms = run.get("step_avg_ms") or speed.get(f"{a.mixer_head}_ms_per_step")
    if step_ms:
        # one GPU runs all 8 micro-batches of a step; 8 GPUs run one each (communication not measured here)
        fig["step_ms_8gpu"] = round(step_ms / 8, 1)
        train_tokens = machine.get("train_tokens", 0)
        rate = speed.get("prefill_tok_per_s")
        wanted = min(a.ngram_prefill_tokens or train_tokens, train_tokens)
        on_clock = rate and tg.MixerConfig.from_args(a).needs_oracle
        prefill_s = min(wanted / rate, tg.PREFILL_MAX_SHARE * tg.LIMIT_TRAIN_SECONDS) if on_clock else 0
        fig["prefill_s"] = round(prefill_s, 1)
        fig["prefill_share"] = f"{prefill_s / tg.LIMIT_TRAIN_SECONDS:.0%} of the 600 s clock"
        if on_clock and wanted / rate > prefill_s:
            fig["prefill_note"] = (f"counting all {wanted} training tokens would take {wanted / rate:.0f} s: the oracle "
                                   f"stops at {prefill_s:.0f} s (set NGRAM_PREFILL_TOKENS to choose)")
        fig["steps_in_600s"] = int((tg.LIMIT_TRAIN_SECONDS - prefill_s) * 1000 / fig["step_ms_8gpu"])
    else:
        why.append("training: no step time measured (see the speed and run stages)")
    if "artifact_bytes" in run:
        fig["artifact_bytes"] = run["artifact_bytes"]
        if run["artifact_bytes"] > tg.LIMIT_ARTIFACT_BYTES:
            why.append(f"artifact: {run['artifact_bytes']} bytes; lower QUANT_BITS/QUANT_MLP_BITS or MODEL_DIM")
    else:
        why.append("artifact: the capped run did not export")
    passes = run.get("eval_projection_8gpu_s")
    if passes:
        fig["eval_s_full_split_8gpu"] = passes | {"total": sum(passes.values())}
        if sum(passes.values()) > tg.LIMIT_EVAL_SECONDS:
            why.append(f"evaluation: {sum(passes.values())} s projected > {tg.LIMIT_EVAL_SECONDS:.0f} s; raise "
                       "EVAL_STRIDE, lower TTT_EPOCHS or NGRAM_MAX_ORDER (bench/eval_speed.py splits the cost)")
    else:
        why.append("evaluation: no pass measured")
    peak = run.get("peak_memory_gib") or speed.get(f"{a.mixer_head}_peak_gib")
    if peak and peak > H100_MEMORY_GIB:
        why.append(f"memory: {peak} GiB per GPU > an H100's {H100_MEMORY_GIB}; raise GRAD_ACCUM_STEPS")
    why += [f"{name}: {stages[name]['status']} (see its figures)" for name in ("machine", "paths", "speed", "run")
            if stages[name]["status"] != "PASS"]
    return fig, why


# ---- driver ------------------------------------------------------------------------------------------------------

def run_stage(name: str, budget_s: float) -> dict:
    """The stage in its own process group, stopped at its budget; its figures so far either way."""
    out = LOGS / f"{name}.json"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--stage", name, str(out)], start_new_session=True,
                            stdout=open(LOGS / f"stage_{name}.out", "w"), stderr=subprocess.STDOUT)
    try:
        proc.wait(timeout=max(budget_s, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result = json.loads(out.read_text()) if out.is_file() else {"status": "FAIL", "figures": {}}
    if proc.returncode != 0:
        tail = ((LOGS / f"stage_{name}.out").read_text().strip().splitlines() or ["(no output)"])[-1][:300]
        result["status"] = "FAIL"
        result["figures"]["stopped"] = (f"at its budget of {budget_s:.0f} s" if proc.returncode == -signal.SIGKILL
                                        else f"exit {proc.returncode}: {tail}")
    return {"name": name, "status": result["status"], "seconds": round(time.perf_counter() - t0, 1),
            "figures": result["figures"]}


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return sha + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--stage":
        globals()[f"stage_{sys.argv[2]}"](Stage(Path(sys.argv[3])))
        return 0
    dry, budget = is_dry(), setting("PREFLIGHT_BUDGET", 540.0, 300.0)
    a, defaults = tg.load_hyperparameters(user_knobs()), tg.load_hyperparameters({})
    changed = {k: getattr(a, k.lower()) for k in tg.KNOB_BY_ENV if getattr(a, k.lower()) != getattr(defaults, k.lower())}
    device = "cpu (dry mode: tiny sizes, not the GPU's figures)" if dry else torch.cuda.get_device_name(0)
    print(f"preflight {'DRY: no GPU figures, every stage at tiny sizes on CPU' if dry else 'on ' + device} "
          f"commit:{commit()} budget:{budget:.0f}s", flush=True)
    print("config_changed " + json.dumps(changed, sort_keys=True), flush=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    t_start, stages = time.perf_counter(), {}
    for name in ("machine", "paths", "speed", "run"):
        left = budget - (time.perf_counter() - t_start)
        stages[name] = run_stage(name, budget * SHARES[name] if name in SHARES else left)
        print(f"stage {name} {stages[name]['status']} {stages[name]['seconds']}s", flush=True)
    t0 = time.perf_counter()
    figures, why = projection(stages)
    stages["projection"] = {"name": "projection", "status": "PASS" if not why else "FAIL",
                            "seconds": round(time.perf_counter() - t0, 1), "figures": figures}
    report = {"device": device, "dry": dry, "commit": commit(), "config_changed": changed,
              "stages": list(stages.values()), "go": not why, "why": why}
    print("| stage | figure | value | status | seconds |\n|---|---|---|---|---|")
    for s in report["stages"]:
        for i, (k, v) in enumerate(s["figures"].items() or [("(none)", "")]):
            print(f"| {s['name'] if i == 0 else ''} | {k} | {v} | {s['status'] if i == 0 else ''} | "
                  f"{s['seconds'] if i == 0 else ''} |")
    print(("go" if not why else "no-go: " + "; ".join(why)) + (" (dry mode: sizes are not the challenge's)" if dry else ""))
    out = Path(os.environ.get("PREFLIGHT_OUT", "logs/preflight.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
