"""Tests of records/make_record.py: synthetic logs in train_gpt.py's format (a `source` line, the run's
`summary_json`, compliance lines), real PRESET=smoke runs whose record folder's command reproduces them, and the
sweep table."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "records" / "make_record.py"
REPO = TOOL.parent.parent
EXAMPLE = REPO / "records" / "track_non_record_16mb" / "2026-11-22_smoke_sample_cpu"
_spec = importlib.util.spec_from_file_location("make_record", TOOL)
mr = importlib.util.module_from_spec(_spec)
sys.modules["make_record"] = mr  # dataclasses look the module up while the class is built
_spec.loader.exec_module(mr)

# ----------------------------------------------------------------------------------------------------------------
# Fixtures: a fake train_gpt.py and a log writer that emits what train_gpt.py writes, plus noise lines.
# ----------------------------------------------------------------------------------------------------------------

SCRIPT_BYTES = b"# a stand-in for train_gpt.py\nimport sentencepiece\nprint('hello')\n"
SCRIPT_SHA = hashlib.sha256(SCRIPT_BYTES).hexdigest()
DEFAULTS = {
    "PRESET": "", "RUN_ID": "", "SEED": 1337, "DATA_PATH": "./data/datasets/fineweb10B_sp1024",
    "TOKENIZER_PATH": "./data/tokenizers/fineweb_1024_bpe.model", "VOCAB_SIZE": 1024, "ITERATIONS": 20000,
    "MAX_WALLCLOCK_SECONDS": 600.0, "NUM_LAYERS": 11, "MODEL_DIM": 512, "MATRIX_LR": 0.025, "MIXER_HEAD": "multi",
    "NGRAM_SCORING": "normalized", "NGRAM_ENT_CENTER": [4.0], "QUANT_BITS": 6, "QUANT_MLP_BITS": 6,
    "QUANT_EMBED_BITS": 8, "TTT_EPOCHS": 1, "EVAL_MAX_TOKENS": 0,
}
# What the test runs changed from the defaults: these (and SEED) must appear in the reconstructed command.
CHANGED = {"MATRIX_LR": 0.03, "NGRAM_ENT_CENTER": [4.0, 3.5], "DATA_PATH": "/data/my shards"}
BPB_PER_NAT = 0.5917  # val_bpb / val_loss of the synthetic validation set
SEED_BPB = {1337: 1.1000, 42: 1.1012, 2025: 1.0995}
VAL_TARGETS = 62_021_845
RECORD_VALUES = {"hardware": "8xNVIDIA_H100_80GB_HBM3", "world_size": 8, "train_cap_seconds": 600.0,
                 "scored_targets": VAL_TARGETS, "val_targets": VAL_TARGETS, "eval_max_tokens": 0,
                 "data": "fineweb verified: 80 files", "val_docs_in_train": 0, "export_fit": "yes"}
RECORD_VERDICTS = {"hardware": "hardware", "train_clock": "train_cap_seconds", "full_validation": "scored_targets",
                   "data": "data", "val_overlap": "val_docs_in_train"}


def score(bpb: float) -> dict:
    return {"val_loss": float(f"{bpb / BPB_PER_NAT:.8f}"), "val_bpb": bpb, "seconds": 90.0, "projection_8gpu_s": 90.0}


def summary(seed: int, *, bpb: float, config: dict, train_seconds: float, total_bytes: int, code_bytes: int,
            tag: str, record: dict | None, verdicts: dict | None) -> dict:
    """The run's summary as train_gpt.py's write_summary writes it."""
    values = RECORD_VALUES | (record or {})
    all_verdicts = {"train_time": "PASS", "eval_time": "PASS", "artifact_size": "PASS", "scoring": "PASS",
                    "train_data_at_eval": "PASS"}
    all_verdicts |= {name: "PASS" if values[key] == RECORD_VALUES[key] else "FAIL"
                     for name, key in RECORD_VERDICTS.items()} | (verdicts or {})
    because = [f"{k}: the log's own reason for {k}" for k, v in all_verdicts.items() if v != "PASS"]
    compliance = values | {"train_seconds": train_seconds, "eval_seconds": 412.25, "eval_projection_seconds": None,
                           "artifact_bytes": total_bytes, "model_bytes": total_bytes - code_bytes,
                           "code_bytes": code_bytes, "scoring": config.get("NGRAM_SCORING", "normalized"),
                           "train_data_at_eval": "no", "verdicts": all_verdicts, "record": not because,
                           "not_record_because": because}
    attn, mlp = (int(b) for b in (tag[3:].split("-") * 2)[-2:][::-1])
    return {
        "run_id": f"run_{seed}", "seed": seed, "hardware": values["hardware"], "torch": "2.13.0+cu128",
        "config_changed": {k: v for k, v in config.items() if v != DEFAULTS.get(k, object()) or k == "RUN_ID"},
        "scores": {"prequant": score(bpb + 0.035), "roundtrip": score(bpb + 0.04), "sliding": score(bpb + 0.02),
                   "legal_ttt": score(bpb)},
        "train": {"steps": 7042, "step_avg_ms": 84.99, "seconds": train_seconds, "prefill_seconds": 1.0,
                  "oracle_tokens": 0, "calibration_seconds": 1.0, "peak_memory_mib": 40000,
                  "final_weights": {"chosen": "ema", "label": "ema(0.997)", "by": "held_back_loss",
                                    "held_back_loss": {"raw": 2.31, "ema": 2.29}, "tokens": 524288}},
        "export": {"method": "gptq", "k_attn": 12.0, "k_mlp": 12.5, "k_embed": 14.0, "widen": 1.0,
                   "bytes": total_bytes, "target": 16_000_000, "tries": 1, "seconds": 5.2,
                   "bits": {"attn": attn, "mlp": mlp, "embed": 8}},
        "bytes": {"model": total_bytes - code_bytes, "code": code_bytes, "source": code_bytes,
                  "total": total_bytes},
        "audit": {"positions": 256, "max_abs_sum_err": 1e-7, "mean_sum": 1.0, "target_independent": "yes"},
        "result": {"val_loss": score(bpb)["val_loss"], "val_bpb": bpb, "head": "multi", "ttt": True},
        "eval_seconds": 412.25, "artifact": "logs/run.ptz", "load_artifact": "", "compliance": compliance}


def log_text(seed: int, *, bpb: float | None = None, sha: str = SCRIPT_SHA, config: dict | None = None,
             drop: tuple[str, ...] = (), verdicts: dict | None = None, total_bytes: int = 15_900_000,
             train_seconds: float = 598.5, tag: str = "int6", record: dict | None = None,
             code_bytes: int = len(SCRIPT_BYTES), edit=None) -> str:
    """One run's log; `drop` removes lines by their first word; edit(summary) changes the summary first."""
    bpb = SEED_BPB.get(seed, 1.1) if bpb is None else bpb
    cfg = DEFAULTS | CHANGED | {"SEED": seed, "RUN_ID": f"run_{seed}"} | (config or {})
    total_bytes += seed % 1000  # artifacts differ a little between seeds
    s = summary(seed, bpb=bpb, config=cfg, train_seconds=train_seconds, total_bytes=total_bytes,
                code_bytes=code_bytes, tag=tag, record=record, verdicts=verdicts)
    if edit:
        edit(s)
    v = s["compliance"].get("verdicts", {})
    lines = [
        f"source train_gpt.py sha256:{sha} bytes:{code_bytes}",
        "versions python:3.11.7 torch:2.13.0+cu128 cuda:12.8",
        "hardware world_size:8 device:cuda gpu:NVIDIA_H100_80GB_HBM3",
        "| NVIDIA-SMI 570.00   Driver Version: 570.00   CUDA Version: 12.8 |",
        "config " + json.dumps(cfg, sort_keys=True),
        "config_defaults " + json.dumps(DEFAULTS, sort_keys=True),
        "config_changed " + json.dumps(s["config_changed"], sort_keys=True),
        f"step:0/20000 val_loss:{4.1 / BPB_PER_NAT:.4f} val_bpb:4.1000 train_time:0ms step_avg:0.01ms",
        "step:200/~7042 train_loss:2.5000 train_time:17000ms step_avg:85.00ms lr_mul:1.000 eta:580s",
        f"step:4000/~7042 val_loss:{1.18 / BPB_PER_NAT:.4f} val_bpb:1.1800 train_time:340000ms step_avg:85.00ms",
        f"legal_ttt_exact val_loss:{bpb / BPB_PER_NAT:.8f} val_bpb:{bpb:.8f}",
        f"compliance train_time:{train_seconds}s limit:600s {v.get('train_time')}",
        f"compliance artifact_bytes:{total_bytes} limit:16000000 {v.get('artifact_size')}",
        "compliance scoring:normalized PASS",
        "compliance_json " + json.dumps(s["compliance"], sort_keys=True),
        f"result val_bpb:{bpb:.8f} (score-first, normalized) log:logs/run.txt artifact:logs/run.ptz",
        "summary_json " + json.dumps(s, sort_keys=True),
    ]
    return "\n".join(line for line in lines if line.split()[0] not in drop) + "\n"


@pytest.fixture
def env(tmp_path):
    """A fake train_gpt.py, an output root, and a writer of log files under tmp_path/logs."""
    script = tmp_path / "train_gpt.py"
    script.write_bytes(SCRIPT_BYTES)
    (tmp_path / "logs").mkdir()
    (tmp_path / "requirements.txt").write_text("torch>=2.5\nnumpy\nsentencepiece  # tokenizer\nzstandard\nbrotli\n")

    def write(seed: int, name: str | None = None, **kw) -> Path:
        path = tmp_path / "logs" / (name or f"run_{seed}.txt")
        path.write_text(log_text(seed, **kw))
        return path

    class Env:
        pass
    e = Env()
    e.script, e.out, e.write, e.tmp = script, tmp_path / "records", write, tmp_path
    e.messages = []
    e.build = lambda logs, **kw: mr.make_record(logs, **({"name": "TestRecord", "out_root": e.out, "script": script,
                                                          "author": "Jane", "github_id": "jane", "date": "2026-11-22",
                                                          "repo_root": tmp_path, "warn": e.messages.append} | kw))
    return e


def three_logs(env, **kw) -> list[Path]:
    return [env.write(s, **kw) for s in SEED_BPB]


def command_of(folder: Path) -> str:
    return (folder / "README.md").read_text().split("```bash\n")[1].split("```")[0]


# ----------------------------------------------------------------------------------------------------------------
# The record folder
# ----------------------------------------------------------------------------------------------------------------

def test_three_seed_record_folder(env):
    logs = three_logs(env)
    folder = env.build(logs, blurb="Normalized mixer with TTT.")
    assert folder == env.out / "track_10min_16mb" / "2026-11-22_TestRecord"
    expected = {"README.md", "submission.json", "train_gpt.py", "train_seed1337.log", "train_seed42.log",
                "train_seed2025.log", "requirements.txt"}
    assert expected <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    assert hashlib.sha256((folder / "train_gpt.py").read_bytes()).hexdigest() == SCRIPT_SHA
    for path, seed in zip(logs, SEED_BPB):
        assert (folder / f"train_seed{seed}.log").read_bytes() == path.read_bytes()
    assert (folder / "requirements.txt").read_text() == "sentencepiece\n"  # only what the script imports

    sub = json.loads((folder / "submission.json").read_text())
    bpbs = list(SEED_BPB.values())
    losses = [float(f"{b / BPB_PER_NAT:.8f}") for b in bpbs]
    mean = sum(bpbs) / 3
    std = math.sqrt(sum((b - mean) ** 2 for b in bpbs) / 2)  # sample std, n - 1
    assert sub["val_bpb"] == pytest.approx(mean, abs=1e-8) and sub["val_bpb_std"] == pytest.approx(std, abs=1e-8)
    lmean = sum(losses) / 3
    assert sub["val_loss"] == pytest.approx(lmean, abs=1e-8)
    assert sub["val_loss_std"] == pytest.approx(math.sqrt(sum((x - lmean) ** 2 for x in losses) / 2), abs=1e-8)
    assert sub["seeds"] == [1337, 42, 2025]
    assert sub["bytes_total"] == 15_900_000 + 337 and sub["bytes_code"] == len(SCRIPT_BYTES)
    assert sub["seed_results"]["42"] == {"val_loss": losses[1], "val_bpb": 1.1012, "artifact_bytes": 15_900_042,
                                         "steps": 7042, "step_avg_ms": 84.99, "train_time_s": 598.5,
                                         "eval_time_s": 412.25}
    assert (sub["author"], sub["github_id"], sub["name"], sub["date"], sub["track"]) == (
        "Jane", "jane", "TestRecord", "2026-11-22", "track_10min_16mb")
    assert sub["blurb"] == "Normalized mixer with TTT." and sub["hardware"] == "8xNVIDIA H100 80GB HBM3"
    assert (sub["pytorch_version"], sub["cuda_version"]) == ("2.13.0+cu128", "12.8")
    assert set(sub["compliance"].values()) == {True} and sub["quantization"] == "int6"
    assert "significance" not in sub
    assert sub["technique_summary"] == ("gptq int6 export (embedding int8), multi n-gram mixer, score-first TTT; "
                                        "3 knobs changed from the defaults")

    readme = (folder / "README.md").read_text()
    assert "| seed | val_bpb | val_loss | artifact bytes | train s | eval s | steps | step_avg ms |" in readme
    assert "| 42 | 1.10120000 | " in readme and "| 15900042 | 598.50 | 412.25 | 7042 | 84.99 |" in readme
    assert f"| **mean** | {sub['val_bpb']:.8f} |" in readme
    # DATA_PATH=/data/my shards was outside the repository: the command names the repository's data folder of that
    # name, and a note says where the runs read it; the folder's own script runs from the repository root
    assert command_of(folder) == (
        "for SEED in 1337 42 2025; do\n  DATA_PATH='./data/datasets/my shards' \\\n  MATRIX_LR=0.03 \\\n"
        "  NGRAM_ENT_CENTER=4.0,3.5 \\\n  SEED=$SEED \\\n  torchrun --standalone --nproc_per_node=8 "
        "records/track_10min_16mb/2026-11-22_TestRecord/train_gpt.py\ndone\n")
    assert "The runs read DATA_PATH=/data/my shards, outside the repository; the command uses ./data/datasets/my " \
           "shards" in readme
    # the changed knobs, generically, beside their defaults (no sentence keyed on a knob name)
    assert "| `MATRIX_LR` | `0.03` | `0.025` |" in readme and "| `NGRAM_ENT_CENTER` | `4.0,3.5` | `4.0` |" in readme
    assert "| seed | pre-quantization | int6 round-trip | int6 sliding window | final (score-first) |" in readme
    assert "| 42 | 1.13620000 | 1.14120000 | 1.12120000 | 1.10120000 |" in readme
    assert "- seed 42: method gptq, k_attn 12, k_mlp 12.5, k_embed 14, widen 1, bytes 15900042" in readme
    assert "Every record check passed for every seed." in readme and "not a record" not in readme.lower()
    assert "compliance artifact_bytes:15900337 limit:16000000 PASS" in readme  # verbatim block
    assert "compliance_json" not in readme
    lineno = next(i for i, line in enumerate(logs[0].read_text().splitlines(), 1) if line.startswith("summary_json"))
    assert f"- seed 1337: summary at line {lineno}, source at line 1 of `train_seed1337.log`" in readme
    assert "No provenance.json was found at `./data/datasets/my shards`" in readme and "/data/my shards`" not in readme
    assert env.messages == []


def test_summary_beside_the_log_is_read_when_the_log_lacks_it(env):
    path = env.write(7, drop=("summary_json",))
    with pytest.raises(mr.RecordError, match=r"run_7\.txt: no `summary_json` line and no run_7\.summary\.json beside"):
        env.build([path])
    (path.parent / "run_7.summary.json").write_text(log_text(7).splitlines()[-1].split(" ", 1)[1])
    folder = env.build([path])
    assert "summary at run_7.summary.json" in (folder / "README.md").read_text()


def test_single_seed_preset_command_and_plot_skip_without_matplotlib(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    folder = env.build([env.write(7, config={"TTT_EPOCHS": 0, "PRESET": "smoke", "ITERATIONS": 20000,
                                             "EVAL_MAX_TOKENS": 16384}, record={"world_size": 1})])
    readme = (folder / "README.md").read_text()
    assert not (folder / "val_bpb.png").exists() and "Plot skipped: matplotlib is not installed" in readme
    command = command_of(folder)
    # PRESET is spelled out: every knob the runs changed, as resolved, so no preset definition or path moves it
    assert "PRESET" not in command and "TTT_EPOCHS=0 \\\n" in command and "EVAL_MAX_TOKENS=16384 \\\n" in command
    assert command.endswith("SEED=7 \\\npython3 records/track_10min_16mb/2026-11-22_TestRecord/train_gpt.py\n")
    assert "RUN_ID" not in command and "NUM_LAYERS" not in command and "ITERATIONS" not in command
    assert "The runs set PRESET=smoke; the command spells out what it resolved to." in readme
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["val_bpb_std"] is None and sub["compliance"]["three_seeds"] is False
    assert any("1 seed(s)" in m for m in env.messages)


def test_plot_written_when_matplotlib_installed_and_nothing_to_draw_is_said(env):
    run = mr.read_log(env.write(5, drop=("step:0/20000", "step:4000/~7042")))
    run.s["compliance"]["train_seconds"] = None
    assert mr.plot_val_bpb([run], env.tmp / "x.png").startswith("Plot skipped: nothing to draw")
    assert not (env.tmp / "x.png").exists()
    pytest.importorskip("matplotlib")
    folder = env.build(three_logs(env))
    assert (folder / "val_bpb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![val_bpb against training time](val_bpb.png)" in (folder / "README.md").read_text()


def test_significance_against_previous_loss_and_bpb(env):
    logs = three_logs(env)
    ours_loss = [float(f"{b / BPB_PER_NAT:.8f}") for b in SEED_BPB.values()]
    prev_loss = [1.905, 1.907, 1.906]
    sub = json.loads((env.build(logs, prev_record_loss=prev_loss).joinpath("submission.json")).read_text())
    t, df, p = mr.welch_one_sided(ours_loss, prev_loss, 0.005)
    sig = sub["significance"]
    assert sig["compared"] == "val_loss" and sig["p_value"] == pytest.approx(p) and sig["margin"] == 0.005
    assert sig["delta_nats"] == pytest.approx(sum(prev_loss) / 3 - sum(ours_loss) / 3, abs=1e-8)
    assert sig["passes_p01"] == (p < 0.01) and p < 0.01  # ~0.047 nats better with tiny spread
    # bpb: the 0.005-nat margin becomes 0.005 * (val_bpb / val_loss) bpb; delta is reported in nats
    prev_bpb = [1.1040, 1.1050, 1.1045]
    folder = env.build(logs, prev_record_bpb=prev_bpb, force=True)
    sig = json.loads((folder / "submission.json").read_text())["significance"]
    ratio = sum(b / l for b, l in zip(SEED_BPB.values(), ours_loss)) / 3
    assert sig["compared"] == "val_bpb" and sig["margin"] == pytest.approx(0.005 * ratio)
    t, df, p = mr.welch_one_sided(list(SEED_BPB.values()), prev_bpb, 0.005 * ratio)
    assert sig["p_value"] == pytest.approx(p) and sig["passes_p01"] is False  # 0.004 bpb ~ 0.007 nats, noisy
    assert sig["delta_nats"] == pytest.approx((sum(prev_bpb) - sum(SEED_BPB.values())) / 3 / ratio, abs=1e-7)
    assert "does not pass" in (folder / "README.md").read_text()


# ----------------------------------------------------------------------------------------------------------------
# Refusals: each is one RecordError naming the problem, and nothing is written
# ----------------------------------------------------------------------------------------------------------------

def test_refuses_other_configurations_naming_every_differing_knob_even_with_the_same_seed(env):
    logs = [env.write(1337), env.write(1337, name="other.txt", config={"MATRIX_LR": 0.04, "TTT_LR": 0.5})]
    with pytest.raises(mr.RecordError) as e:
        env.build(logs)
    assert re.fullmatch(r"logs disagree on the configuration: MATRIX_LR=0\.03 in \S+run_1337\.txt but 0\.04 in "
                        r"\S+other\.txt, TTT_LR=\(absent\) in \S+ but 0\.5 in \S+other\.txt \(seeds of one "
                        r"configuration differ only in SEED and RUN_ID\)", str(e.value)), str(e.value)
    assert not env.out.exists()


def test_refuses_an_evaluation_of_an_artifact_as_a_seed(env):
    path = env.write(1, edit=lambda s: s.update(load_artifact="logs/run_1.ptz"))
    with pytest.raises(mr.RecordError, match=r"run_1\.txt: an evaluation of LOAD_ARTIFACT=logs/run_1\.ptz \(it "
                                             r"trained nothing.*not a seed of a record"):
        env.build([path], non_record=True)


def test_refuses_logs_of_different_scripts(env):
    logs = [env.write(1337), env.write(42, sha="ab" * 32)]
    with pytest.raises(mr.RecordError, match=r"logs disagree on the script: .* but .*run_42\.txt ran sha256:abab"):
        env.build(logs)


def test_refuses_script_whose_hash_differs_from_logs(env):
    other = env.tmp / "edited_train_gpt.py"
    other.write_bytes(SCRIPT_BYTES + b"# edited after the run\n")
    with pytest.raises(mr.RecordError, match=r"--script .*edited_train_gpt\.py has sha256:.* but the logs ran"):
        env.build(three_logs(env), script=other)
    assert not env.out.exists()


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["scores"].pop("legal_ttt"), "scores.legal_ttt.val_loss (missing), scores.legal_ttt.val_bpb (missing)"),
    (lambda s: s["compliance"].update(train_seconds="598.5"), 'compliance.train_seconds ("598.5")'),
    (lambda s: s["compliance"].pop("verdicts"), "compliance.verdicts (missing)"),
    (lambda s: s["bytes"].update(total=True), "bytes.total (true)"),
])
def test_refuses_a_summary_that_lacks_or_mistypes_a_key(env, edit, fragment):
    with pytest.raises(mr.RecordError, match=r"run_42\.txt: the run's summary \(line \d+\) lacks or mistypes "):
        env.build([env.write(1337), env.write(42, edit=edit)])
    with pytest.raises(mr.RecordError) as e:
        env.build([env.write(42, edit=edit)])
    assert fragment in str(e.value)


def test_refuses_failed_compliance_without_non_record(env):
    logs = [env.write(1337), env.write(42, verdicts={"train_time": "FAIL"}, train_seconds=612.0)]
    with pytest.raises(mr.RecordError) as e:
        env.build(logs)
    assert str(e.value) == ("not a record: train_time (seed 42): trained 612.0 s, over the 600 s limit; pass "
                            "--non-record to file it as a non-record submission")
    assert not env.out.exists()


def test_recheck_catches_a_pass_verdict_on_an_oversized_artifact_and_a_slow_projection(env):
    logs = [env.write(1337, total_bytes=16_000_001), env.write(42)]
    with pytest.raises(mr.RecordError, match=r"not a record: artifact_size \(seed 1337\): 16000338 bytes, over "
                                             r"the 16000000-byte limit \(though the log says PASS\)"):
        env.build(logs)
    slow = env.write(42, edit=lambda s: s["compliance"].update(eval_projection_seconds=64506.0))
    with pytest.raises(mr.RecordError, match=r"eval_time \(seed 42\): evaluated in 412\.2 s, projected to 64506\.0 s "
                                             r"for the full split on 8 GPUs \(though the log says PASS\)"):
        env.build([logs[0].parent / "run_1337.txt", slow])


def test_non_record_accepts_failed_compliance(env):
    logs = [env.write(s, config={"NGRAM_SCORING": "hashed_target"}, verdicts={"scoring": "FAIL"}) for s in SEED_BPB]
    folder = env.build(logs, non_record=True)
    assert folder.parent.name == "track_non_record_16mb"
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["track"] == "track_non_record_16mb"
    assert sub["compliance"]["no_hashed_ngram_cache"] is False and sub["compliance"]["train_under_600s"] is True
    readme = (folder / "README.md").read_text()
    assert ("**Non-record submission**: it is not a record because\n\n- scoring: scoring hashed_target, not a "
            "normalized distribution over the vocabulary (C1/C2)\n") in readme
    assert "NGRAM_SCORING=hashed_target" in readme
    with pytest.raises(mr.RecordError, match="--non-record contradicts --track track_10min_16mb"):
        env.build(logs, non_record=True, track="track_10min_16mb")


def test_refuses_duplicate_seeds(env):
    logs = [env.write(1337), env.write(1337, name="again.txt")]
    with pytest.raises(mr.RecordError, match=r"duplicate seed 1337: in both .*run_1337\.txt and .*again\.txt"):
        env.build(logs)


def test_refuses_existing_folder_unless_force(env):
    logs = three_logs(env)
    folder = env.build(logs)
    (folder / "stale.txt").write_text("from an earlier attempt")
    with pytest.raises(mr.RecordError, match="already exists.*--force"):
        env.build(logs)
    assert env.build(logs[:2], force=True) == folder
    assert not (folder / "stale.txt").exists() and not (folder / "train_seed2025.log").exists()


def test_refuses_log_with_two_runs_no_source_malformed_lines_and_bad_arguments(env):
    path = env.tmp / "logs" / "twice.txt"
    path.write_text(log_text(1) + log_text(2))
    with pytest.raises(mr.RecordError, match="holds 2 runs"):
        env.build([path])
    with pytest.raises(mr.RecordError, match="no `source train_gpt.py sha256:... bytes:...` line"):
        env.build([env.write(1, drop=("source",))])
    path.write_text(log_text(1).replace("summary_json {", "summary_json {oops"))
    with pytest.raises(mr.RecordError, match=r"twice\.txt: line \d+ is malformed \(JSONDecodeError"):
        env.build([path])
    with pytest.raises(mr.RecordError, match="--name 'my record' must be"):
        env.build([env.write(1)], name="my record")
    with pytest.raises(mr.RecordError, match="--date '2026-13-01' is not a date"):
        env.build([env.write(1)], date="2026-13-01")
    with pytest.raises(mr.RecordError, match="at least 2 seeds on each side"):
        env.build([env.write(1)], prev_record_loss=[1.9, 1.91])
    with pytest.raises(mr.RecordError, match="--script .*nope.py: no such file"):
        env.build([env.write(2)], script=env.tmp / "nope.py")


def test_cli_refusal_is_one_line_exit_2_and_success_exit_0(env):
    logs = [str(env.write(1337)), str(env.write(1337, name="dup.txt"))]
    base = [sys.executable, str(TOOL), "--name", "Cli", "--out-root", str(env.out), "--script", str(env.script),
            "--date", "2026-11-22", "--author", "A", "--github-id", "a"]
    bad = subprocess.run(base + logs, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("make_record: error: duplicate seed 1337")
    bad = subprocess.run(base + ["--prev-record-bpb", "1.1,x", logs[0]], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "comma-separated" in bad.stderr
    ok = subprocess.run(base + [logs[0], str(env.write(42)), "--prev-record-loss", "1.9,1.91"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "wrote " in ok.stdout and "significance: delta" in ok.stdout
    assert (env.out / "track_10min_16mb" / "2026-11-22_Cli" / "submission.json").is_file()
    cpu = [str(env.write(s, name=f"cpu_{s}.txt", record={"hardware": "1xcpu"})) for s in (1, 2)]
    bad = subprocess.run(base + ["--name", "Cpu"] + cpu, capture_output=True, text=True)  # the last --name wins
    assert bad.returncode == 2 and bad.stderr == (
        "make_record: error: not a record: hardware: ran on 1xcpu, a record needs 8xH100; pass "
        "--non-record to file it as a non-record submission\n")
    ok = subprocess.run(base + ["--name", "Cpu", "--non-record"] + cpu, capture_output=True, text=True)
    assert ok.returncode == 0 and (env.out / "track_non_record_16mb" / "2026-11-22_Cpu").is_dir(), ok.stderr
    bad = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True)
    assert bad.returncode == 2 and "give the seeds' logs and --name (or --results)" in bad.stderr


# ----------------------------------------------------------------------------------------------------------------
# The record checks, the portable command, the sweep table
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tag", ["int5", "int6", "int5-6"])
def test_record_at_any_bit_width(env, tag):
    folder = env.build([env.write(s, tag=tag) for s in SEED_BPB])
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["quantization"] == tag and f"gptq {tag} export" in sub["technique_summary"]
    assert f"| seed | pre-quantization | {tag} round-trip | {tag} sliding window |" in (folder / "README.md").read_text()


def test_record_track_refused_naming_every_failed_check(env):
    cpu_run = {"hardware": "1xcpu", "world_size": 1, "train_cap_seconds": 0.0, "scored_targets": 16384,
               "eval_max_tokens": 16384, "data": "not the challenge's FineWeb: sample"}
    logs = [env.write(s, record=cpu_run) for s in SEED_BPB]
    with pytest.raises(mr.RecordError) as e:
        env.build(logs)
    assert str(e.value) == (
        "not a record: hardware: ran on 1xcpu, a record needs 8xH100; train_clock: MAX_WALLCLOCK_SECONDS=0 (no cap); "
        "full_validation: scored 16384 of 62021845 targets (EVAL_MAX_TOKENS=16384); data: not the challenge's "
        "FineWeb: sample; pass --non-record to file it as a non-record submission")
    assert not env.out.exists()
    folder = env.build(logs, non_record=True)
    flags = json.loads((folder / "submission.json").read_text())["compliance"]
    assert {k for k, v in flags.items() if not v} == {"eight_h100", "train_clock_capped", "full_validation",
                                                       "challenge_fineweb"}
    assert command_of(folder).endswith("python3 records/track_non_record_16mb/2026-11-22_TestRecord/train_gpt.py\n"
                                       "done\n")  # one process: no torchrun needed


def test_recheck_and_log_verdicts_both_count(env):
    logs = [env.write(1337, record={"hardware": "8xNVIDIA_A100_80GB"}, verdicts={"hardware": "PASS"}),
            env.write(42, verdicts={"val_overlap": "FAIL", "new_check": "FAIL"}),
            env.write(2025, record={"val_docs_in_train": None, "export_fit": "no"}, verdicts={"eval_time": "SKIP"})]
    with pytest.raises(mr.RecordError) as e:
        env.build(logs)
    assert str(e.value).removeprefix("not a record: ").split("; ") == [
        "hardware (seed 1337): ran on 8xNVIDIA_A100_80GB, a record needs 8xH100 (though the log says PASS)",
        "val_overlap (seed 42): the log's verdict is FAIL: the log's own reason for val_overlap",
        "new_check (seed 42): the log's verdict is FAIL",
        "eval_time (seed 2025): the log's verdict is SKIP: the log's own reason for eval_time",
        "val_overlap (seed 2025): val_docs_in_train unknown (the data's provenance record did not check it)",
        "export_fit (seed 2025): export_fit no (the export did not fit the byte target)",
        "pass --non-record to file it as a non-record submission"]
    folder = env.build(logs, non_record=True)
    flags = json.loads((folder / "submission.json").read_text())["compliance"]
    assert flags["eight_h100"] is False and flags["no_val_in_train"] is False and flags["full_validation"] is True
    assert flags["eval_under_600s"] is False
    readme = (folder / "README.md").read_text()  # a check no seed failed, only skipped, is not called failed
    assert "| eval_under_600s | not measured |" in readme and "| no_val_in_train | no |" in readme
    assert "| eight_h100 | no |" in readme and "| full_validation | yes |" in readme


def test_command_paths_are_relative_to_the_repository_and_the_data_is_described(env):
    repo = env.tmp / "repo"
    data = repo / "data" / "datasets" / "fineweb10B_sp4096"
    data.mkdir(parents=True)
    (data / "provenance.json").write_text(json.dumps({
        "kind": "fineweb", "source": "willdepueoai/parameter-golf:datasets/fineweb10B_sp4096", "variant": "sp4096",
        "files": {"fineweb_train_000000.bin": {"bytes": 10}, "fineweb_train_000001.bin": {"bytes": 10},
                  "fineweb_val_000000.bin": {"bytes": 5}},
        "tokenizer": {"sha256": "ab" * 32}, "val_docs_in_train": 0}))
    paths = {"DATA_PATH": str(data), "TOKENIZER_PATH": "/mnt/tok/fineweb_4096_bpe.model"}
    folder = env.build([env.write(s, config=paths) for s in SEED_BPB], repo_root=repo)
    readme, command = (folder / "README.md").read_text(), command_of(folder)
    assert "  DATA_PATH=./data/datasets/fineweb10B_sp4096 \\\n" in command  # inside the repository: made relative
    assert "  TOKENIZER_PATH=./data/tokenizers/fineweb_4096_bpe.model \\\n" in command  # outside: the default place
    assert str(env.tmp) not in readme and "/mnt" not in command
    assert ("The runs read TOKENIZER_PATH=/mnt/tok/fineweb_4096_bpe.model, outside the repository; the command uses "
            "./data/tokenizers/fineweb_4096_bpe.model") in readme and "The runs read DATA_PATH" not in readme
    assert "Built with `python3 data/prepare.py fineweb --variant sp4096 --train-shards 2`." in readme
    assert "3 shard files (25 bytes), tokenizer sha256 `" + "ab" * 32 + "`" in readme
    # an outside folder named like the default dataset is the default: no variable, but the note says where it was
    folder = env.build([env.write(1, config={"DATA_PATH": "/scratch/fineweb10B_sp1024/"})], force=True)
    assert "DATA_PATH" not in command_of(folder)
    assert "The runs read DATA_PATH=/scratch/fineweb10B_sp1024/, outside the repository" in \
        (folder / "README.md").read_text()


def test_requirements_list_only_what_the_script_imports(env):
    req = env.tmp / "requirements.txt"
    req.write_text("# CPU: pip install torch first\ntorch>=2.5\nnumpy\nsentencepiece>=0.2\nzstandard  # data\n\n"
                   "brotli>=1.1\n# Optional: matplotlib\n")
    env.script.write_bytes(SCRIPT_BYTES + b"import brotli\nfrom numpy import zeros\n")
    logs = [env.write(s, sha=hashlib.sha256(env.script.read_bytes()).hexdigest()) for s in SEED_BPB]
    folder = env.build(logs)
    assert (folder / "requirements.txt").read_text() == "sentencepiece>=0.2\nbrotli>=1.1\n"  # no zstandard
    assert "requirements.txt` lists (sentencepiece>=0.2, brotli>=1.1)" in (folder / "README.md").read_text()
    req.write_text("torch\nnumpy\n")
    folder = env.build(logs, force=True)
    assert not (folder / "requirements.txt").exists() and "requirements.txt" not in (folder / "README.md").read_text()
    repo_lines = (REPO / "requirements.txt").read_text()
    imported = mr.script_requirements((REPO / "train_gpt.py").read_bytes(), REPO / "requirements.txt")
    assert imported == ["sentencepiece", "brotli"] and "zstandard" in repo_lines  # data/prepare.py reads .zst


def test_results_table_is_one_row_per_run(env, tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [json.loads(log_text(s, config={"PRESET": "smoke"} | ({"MATRIX_LR": 0.05} if s == 42 else {}))
                       .splitlines()[-1].split(" ", 1)[1]) for s in SEED_BPB]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = mr.results_table(path).splitlines()
    assert table[0] == "Knobs every run set: DATA_PATH=my shards NGRAM_ENT_CENTER=4.0,3.5 PRESET=smoke"
    assert table[2] == "| run_id | knobs | result val_bpb | bytes | steps | step_avg_ms | train s | eval s |"
    assert table[4] == "| run_1337 | MATRIX_LR=0.03 | 1.10000000 | 15900337 | 7042 | 84.99 | 598.5 | 412.2 |"
    assert table[5].startswith("| run_42 | MATRIX_LR=0.05 SEED=42 | 1.10120000 |") and len(table) == 7
    cli = subprocess.run([sys.executable, str(TOOL), "--results", str(path)], capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip().splitlines() == table
    path.write_text("{not json\n")
    cli = subprocess.run([sys.executable, str(TOOL), "--results", str(path)], capture_output=True, text=True)
    assert cli.returncode == 2 and cli.stderr.startswith("make_record: error: ") and "line 1 is not a run summary" \
        in cli.stderr and cli.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------------
# Real runs: the folder's command reproduces the record; the example folder is what the tool makes today
# ----------------------------------------------------------------------------------------------------------------

def smoke(cwd: Path, script: Path, env: dict) -> subprocess.CompletedProcess:
    sys.path.insert(0, str(REPO))
    import train_gpt as tg
    clean = {k: v for k, v in os.environ.items() if k not in tg.KNOB_BY_ENV}
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=clean | {"OMP_NUM_THREADS": "1"} | env,
                          capture_output=True, text=True, timeout=600)


def exact_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "_exact " in line]


def test_the_record_folders_command_reproduces_the_run_exactly(tmp_path):
    """A smoke run with a knob set back to its plain default under the preset (SWA_EVERY: the preset says 5), the
    record built from it, and the README's command run as written from the repository root: the same numbers."""
    pytest.importorskip("torch")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "train_gpt.py", repo / "train_gpt.py")
    (repo / "data").symlink_to(REPO / "data")
    if not (REPO / "data/datasets/sample_sp1024/provenance.json").is_file():
        pytest.skip("python3 data/prepare.py sample has not been run")
    first = smoke(repo, repo / "train_gpt.py", {"PRESET": "smoke", "SEED": "3", "RUN_ID": "orig", "SWA_EVERY": "50",
                                                "ITERATIONS": "12"})
    assert first.returncode == 0, first.stderr[-2000:]
    folder = mr.make_record([repo / "logs/orig.txt"], name="Repro", out_root=repo / "records", date="2026-12-04",
                            script=repo / "train_gpt.py", non_record=True, repo_root=repo, warn=lambda m: None)
    command = command_of(folder)
    assert "SWA_EVERY" not in command and "PRESET" not in command and "/work" not in command
    again = subprocess.run(["bash", "-c", "export OMP_NUM_THREADS=1 RUN_ID=again\n" + command], cwd=repo,
                           env={k: v for k, v in os.environ.items() if k not in ("PRESET", "SWA_EVERY")},
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert exact_lines(again.stdout) == exact_lines(first.stdout) and len(exact_lines(first.stdout)) == 4
    readme = (folder / "README.md").read_text()
    assert "Built with `python3 data/prepare.py sample`. Its `provenance.json` (sha256 `" in readme
    load = smoke(repo, repo / "train_gpt.py", {"PRESET": "smoke", "RUN_ID": "eval", "LOAD_ARTIFACT": "logs/orig.ptz"})
    assert load.returncode == 0, load.stderr[-2000:]
    with pytest.raises(mr.RecordError, match="an evaluation of LOAD_ARTIFACT=logs/orig.ptz"):
        mr.make_record([repo / "logs/eval.txt"], name="Eval", out_root=repo / "records", script=repo / "train_gpt.py",
                       non_record=True, repo_root=repo, warn=lambda m: None)


def test_example_folder_is_what_the_tool_makes_today(env, sample_data, monkeypatch):
    """The example folder, rebuilt from its own logs and script, is byte for byte what the tool writes."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the example was written without matplotlib
    logs, script = sorted(EXAMPLE.glob("train_seed*.log")), EXAMPLE / "train_gpt.py"
    assert len(logs) == 3
    folder = env.build(logs, script=script, non_record=True, repo_root=REPO, name="smoke_sample_cpu",
                       requirements=REPO / "requirements.txt", author="parameter-golf n-gram mixer maintainers",
                       github_id="-", blurb=json.loads((EXAMPLE / "submission.json").read_text())["blurb"])
    sub, example = (json.loads((f / "submission.json").read_text()) for f in (folder, EXAMPLE))
    assert sub == example
    ours, theirs = ((f / "README.md").read_text() for f in (folder, EXAMPLE))
    assert ours == theirs and (folder / "requirements.txt").read_text() == "sentencepiece\nbrotli\n"
    assert "/work/" not in theirs and str(REPO) not in theirs



# A stand-in train_gpt.py with the packing functions of contract section 4 (lzma + base85, self-extracting).
PACKER_SCRIPT = b'''import base64, lzma
PACKED_MARKER = b"#!/usr/bin/env python3\\n# train_gpt.py packed"


def pack_source(source):
    blob = base64.b85encode(lzma.compress(source))
    return (PACKED_MARKER + b"\\nimport base64,lzma\\nexec(compile(lzma.decompress(base64.b85decode(b'" + blob
            + b"')),__file__,'exec'))\\n")


def unpack_source(data):
    if not data.startswith(PACKED_MARKER):
        return data
    return lzma.decompress(base64.b85decode(data.split(b"b85decode(b'", 1)[1].split(b"'", 1)[0]))


if __name__ == "__main__":
    print("training as", __file__.rsplit("/", 1)[-1])
''' + b"# the rest of a long training script\n" * 200


def packer_logs(env, script_bytes: bytes) -> tuple[Path, list[Path]]:
    script = env.tmp / "ran" / "train_gpt.py"
    script.parent.mkdir(exist_ok=True)
    script.write_bytes(script_bytes)
    sha = hashlib.sha256(script_bytes).hexdigest()
    return script, [env.write(s, sha=sha, code_bytes=len(script_bytes)) for s in SEED_BPB]


def test_packed_script_replaces_the_source_and_counts_its_bytes(env):
    script, logs = packer_logs(env, PACKER_SCRIPT)
    folder = env.build(logs, script=script, packed=True)
    packed = (folder / "train_gpt.py").read_bytes()
    ns: dict = {}
    exec(PACKER_SCRIPT, ns)
    assert packed.startswith(ns["PACKED_MARKER"]) and ns["unpack_source"](packed) == PACKER_SCRIPT
    assert len(packed) < len(PACKER_SCRIPT)
    ran = subprocess.run([sys.executable, str(folder / "train_gpt.py")], capture_output=True, text=True)
    assert ran.stdout == "training as train_gpt.py\n", ran.stderr  # the packed file runs the script
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["bytes_code"] == len(packed) and sub["bytes_code_unpacked"] == len(PACKER_SCRIPT)
    for seed in SEED_BPB:
        model_bytes = 15_900_000 + seed % 1000 - len(PACKER_SCRIPT)
        assert sub["seed_results"][str(seed)]["artifact_bytes"] == model_bytes + len(packed)
    assert sub["bytes_total"] == 15_900_000 + 337 - len(PACKER_SCRIPT) + len(packed)
    readme = (folder / "README.md").read_text()
    assert "is the **packed** form of the script that ran" in readme
    assert hashlib.sha256(packed).hexdigest() in readme and hashlib.sha256(PACKER_SCRIPT).hexdigest() in readme
    assert any("logged packed code of" in m for m in env.messages)  # the synthetic logs state another size


def test_packed_script_that_ran_packed_is_copied_unchanged(env):
    ns: dict = {}
    exec(PACKER_SCRIPT, ns)
    already = ns["pack_source"](PACKER_SCRIPT)
    script, logs = packer_logs(env, already)
    folder = env.build(logs, script=script, packed=True)
    assert (folder / "train_gpt.py").read_bytes() == already
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["bytes_code"] == len(already) and sub["bytes_code_unpacked"] == len(PACKER_SCRIPT)
    assert "which was already packed" in (folder / "README.md").read_text()


def test_raw_copies_the_readable_script_and_counts_it(env):
    """--raw: the runs' fit counted the packed code, the folder holds the readable script; both totals count it."""
    ns: dict = {}
    exec(PACKER_SCRIPT, ns)
    packed_len = len(ns["pack_source"](PACKER_SCRIPT))

    def logged_packed(s):  # what train_gpt.py logs: code = the packed bytes, source = the readable ones
        s["bytes"] |= {"code": packed_len, "total": s["bytes"]["model"] + packed_len}
    script, _ = packer_logs(env, PACKER_SCRIPT)
    sha = hashlib.sha256(PACKER_SCRIPT).hexdigest()
    logs = [env.write(s, sha=sha, code_bytes=len(PACKER_SCRIPT), edit=logged_packed) for s in SEED_BPB]
    folder = env.build(logs, script=script, packed=False)
    assert (folder / "train_gpt.py").read_bytes() == PACKER_SCRIPT
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["bytes_code"] == len(PACKER_SCRIPT) and "bytes_code_unpacked" not in sub
    for seed in SEED_BPB:
        model_bytes = 15_900_000 + seed % 1000 - len(PACKER_SCRIPT)
        assert sub["seed_results"][str(seed)]["artifact_bytes"] == model_bytes + len(PACKER_SCRIPT)
    assert sub["bytes_total"] - sub["bytes_code"] == max(15_900_000 + s % 1000 for s in SEED_BPB) - len(PACKER_SCRIPT)


def test_packed_refuses_a_script_that_cannot_pack_itself(env):
    with pytest.raises(mr.RecordError, match=r"packing: --script .* has no pack_source, unpack_source, "
                                             r"PACKED_MARKER"):
        env.build(three_logs(env), packed=True)
    broken = PACKER_SCRIPT + b"_unpack = unpack_source\nunpack_source = lambda data: _unpack(data)[:-1]\n"
    script, logs = packer_logs(env, broken)
    with pytest.raises(mr.RecordError, match=r"unpack_source\(pack_source\(script\)\) is not the script that ran"):
        env.build(logs, script=script, packed=True)
    assert not env.out.exists()


def test_packed_with_the_repository_train_gpt(env):
    pytest.importorskip("torch")
    source = (REPO / "train_gpt.py").read_bytes()
    if b"def pack_source" not in source:
        pytest.skip("train_gpt.py has no pack_source yet (contract section 4)")
    script, logs = packer_logs(env, source)  # a copy: the hash the logs name stays fixed
    folder = env.build(logs[:1], script=script, packed=True)
    packed = (folder / "train_gpt.py").read_bytes()
    packer = mr.load_packer(script)  # the packed script runs the source without its comments and docstrings
    assert packer.unpack_source(packed) == packer.runnable_source(source) and len(packed) < len(source) / 3
    assert json.loads((folder / "submission.json").read_text())["bytes_code"] == len(packed)


# ----------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------

def test_welch_one_sided_against_hand_computation():
    # new = [1.00, 1.01, 1.02]: mean 1.01, sample variance (0.01^2 + 0 + 0.01^2) / 2 = 1e-4; prev the same shifted
    # to mean 1.04. Improvement 0.03, minus the 0.005 margin = 0.025.
    # se = sqrt(1e-4/3 + 1e-4/3) = 0.01 * sqrt(2/3), so t = 0.025 / (0.01 * sqrt(2/3)) = 2.5 * sqrt(1.5) = 3.0618622.
    # Welch-Satterthwaite with a = b = 1e-4/3: df = (2a)^2 / (a^2/2 + b^2/2) = 4a^2 / a^2 = 4.
    # For 4 degrees of freedom the CDF has a closed form: F(t) = 1/2 + (3/8) u (1 - u^2/12) with u = t / sqrt(1 + t^2/4)
    # (as t / sqrt(1+t^2/4) * (1 - t^2 / (12 (1 + t^2/4)))): t^2 = 9.375, 1 + t^2/4 = 3.34375, u = 1.6744367,
    # u^2/12 = 0.2336449, F = 0.5 + 0.375 * 1.6744367 * 0.7663551 = 0.9812049, so p = 1 - F = 0.0187951.
    t, df, p = mr.welch_one_sided([1.00, 1.01, 1.02], [1.03, 1.04, 1.05], 0.005)
    assert t == pytest.approx(2.5 * math.sqrt(1.5), rel=1e-9)
    assert df == pytest.approx(4.0, rel=1e-9)
    assert p == pytest.approx(0.0187951, abs=5e-7)
    u = t / math.sqrt(1 + t * t / 4)
    assert p == pytest.approx(1 - (0.5 + 0.375 * u * (1 - u * u / 12)), rel=1e-10)
    scipy_stats = pytest.importorskip("scipy.stats")
    assert p == pytest.approx(scipy_stats.t.sf(t, df), rel=1e-10)
    ref = scipy_stats.ttest_ind([1.03, 1.04, 1.05], [1.005, 1.015, 1.025], equal_var=False, alternative="greater")
    assert p == pytest.approx(ref.pvalue, rel=1e-9)  # shifting new by the margin gives scipy's plain Welch test


def test_welch_unequal_sizes_matches_scipy_and_zero_variance_edge():
    new, prev = [1.101, 1.098, 1.1035, 1.0992], [1.112, 1.109]
    t, df, p = mr.welch_one_sided(new, prev, 0.002)
    assert 1 < df < 5 and 0 < p < 1
    scipy_stats = pytest.importorskip("scipy.stats")
    ref = scipy_stats.ttest_ind(prev, [x + 0.002 for x in new], equal_var=False, alternative="greater")
    assert (t, p) == (pytest.approx(ref.statistic, rel=1e-9), pytest.approx(ref.pvalue, rel=1e-9))
    assert mr.welch_one_sided([1.0, 1.0], [1.1, 1.1], 0.005)[2] == 0.0
    assert mr.welch_one_sided([1.0, 1.0], [1.0, 1.0], 0.005)[2] == 1.0
    with pytest.raises(ValueError):
        mr.welch_one_sided([1.0], [1.1, 1.2], 0.005)


def test_student_t_closed_forms_without_scipy():
    for t in (-7.5, -1.0, -0.1, 0.0, 0.3, 1.0, 2.5, 40.0):
        assert mr.student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12, abs=1e-15)  # Cauchy
        assert mr.student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12, abs=1e-15)
    assert mr.student_t_sf(math.inf, 3) == 0.0 and mr.student_t_sf(-math.inf, 3) == 1.0
    # For integers, I_x(a, b) = P(Binomial(a + b - 1, x) >= a):
    # I_0.4(2, 3) = sum_{j=2}^{4} C(4, j) 0.4^j 0.6^(4-j) = 6*.16*.36 + 4*.064*.6 + .0256 = .3456 + .1536 + .0256
    assert mr.betainc_regularized(2.0, 3.0, 0.4) == pytest.approx(0.5248, rel=1e-12)


def test_student_t_cdf_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (0.7, 1.0, 2.0, 2.37, 3.9, 4.0, 7.5, 30.0, 250.0, 5000.0):
        for t in (-30.0, -4.2, -1.3, -0.01, 0.0, 0.05, 0.9, 2.0, 3.06, 6.0, 25.0):
            assert mr.student_t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-9, abs=1e-300), (t, df)
            assert mr.student_t_sf(t, df) == pytest.approx(scipy_stats.t.sf(t, df), rel=1e-9, abs=1e-300), (t, df)
