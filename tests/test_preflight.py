"""bench/preflight.py in dry mode (what CI can run): every stage runs at tiny sizes on CPU, and the table and the JSON
hold every stage and the figures a competitor reads before renting 8 GPUs."""
import json
import os
import subprocess
import sys

from conftest import ROOT, tg

STAGE_FIGURES = {
    "machine": {"gpu", "torch", "cuda", "flash_attention_3", "free_disk_gib", "train_tokens", "val_tokens", "tokenizer"},
    "paths": {"multi", "entropy", "tilt", "load_artifact"},
    "speed": {"none_ms_per_step", "none_tok_per_s", "multi_ms_per_step", "multi_tok_per_s", "prefill_tok_per_s"},
    "run": {"steps", "step_avg_ms", "final_weights", "export_fit", "export_seconds", "export_cost_bpb", "artifact_bytes",
            "audit", "result_val_bpb", "sliding_val_bpb", "eval_tok_per_s", "eval_projection_8gpu_s"},
    "projection": {"step_ms_8gpu", "prefill_s", "steps_in_600s", "artifact_bytes", "eval_s_full_split_8gpu"},
}


def test_dry_preflight_reports_every_stage_and_figure(sample_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in tg.KNOB_BY_ENV and not k.startswith("PREFLIGHT_")}
    env |= {"PREFLIGHT_DRY": "1", "PREFLIGHT_OUT": str(tmp_path / "pf.json"), "OMP_NUM_THREADS": "1",
            "TTT_EPOCHS": "1"}  # a knob the user set: reported as changed, used by every stage
    proc = subprocess.run([sys.executable, str(ROOT / "bench/preflight.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.startswith("preflight DRY: no GPU figures")
    report = json.loads((tmp_path / "pf.json").read_text())
    assert report["dry"] is True and report["commit"] and "PRESET" in report["config_changed"]
    assert [s["name"] for s in report["stages"]] == list(STAGE_FIGURES)
    for stage in report["stages"]:
        assert STAGE_FIGURES[stage["name"]] <= set(stage["figures"]), (stage["name"], stage["figures"])
        assert stage["seconds"] >= 0 and f"| {stage['name']} |" in proc.stdout
        if stage["name"] != "projection":  # the projection's verdict on CPU sizes is whatever they give
            assert stage["status"] == "PASS", stage
    paths = report["stages"][1]["figures"]
    assert "target_independent:yes" in paths["multi"] and paths["load_artifact"].endswith("0.00e+00 (allowed 0)")
    run = report["stages"][3]["figures"]
    assert 0 < run["artifact_bytes"] <= 16_000_000 and run["steps"] > 0
    assert report["go"] == (not report["why"]) and proc.stdout.strip().splitlines()[-2].startswith(
        "go" if report["go"] else "no-go: ")


def test_a_stage_that_fails_is_reported_and_the_next_still_runs(sample_data, tmp_path):
    """A missing data folder fails machine, paths, speed and run, each with its reason; the projection says no-go."""
    env = {k: v for k, v in os.environ.items() if k not in tg.KNOB_BY_ENV and not k.startswith("PREFLIGHT_")}
    env |= {"PREFLIGHT_DRY": "1", "PREFLIGHT_OUT": str(tmp_path / "pf.json"), "OMP_NUM_THREADS": "1",
            "DATA_PATH": str(tmp_path / "no_such_data")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench/preflight.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "pf.json").read_text())
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status == {"machine": "FAIL", "paths": "FAIL", "speed": "FAIL", "run": "FAIL", "projection": "FAIL"}
    assert "set DATA_PATH" in report["stages"][0]["figures"]["train_shards"]
    assert not report["go"] and any(w.startswith("artifact:") for w in report["why"])
