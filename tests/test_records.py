"""Tests of records/make_record.py on synthetic logs written in train_gpt.py's log format (records/README.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "records" / "make_record.py"
_spec = importlib.util.spec_from_file_location("make_record", TOOL)
mr = importlib.util.module_from_spec(_spec)
sys.modules["make_record"] = mr  # dataclasses look the module up while the class is built
_spec.loader.exec_module(mr)

# ----------------------------------------------------------------------------------------------------------------
# Fixtures: a fake train_gpt.py and a log writer that emits exactly the log format contract, plus noise lines.
# ----------------------------------------------------------------------------------------------------------------

SCRIPT_BYTES = b"# a stand-in for train_gpt.py\nprint('hello')\n"
SCRIPT_SHA = hashlib.sha256(SCRIPT_BYTES).hexdigest()
DEFAULTS = {
    "PRESET": "", "RUN_ID": "", "SEED": 1337, "DATA_PATH": "./data/datasets/fineweb10B_sp1024", "VOCAB_SIZE": 1024,
    "ITERATIONS": 20000, "TRAIN_BATCH_TOKENS": 786432, "TRAIN_SEQ_LEN": 2048, "MAX_WALLCLOCK_SECONDS": 600.0,
    "NUM_LAYERS": 11, "MODEL_DIM": 512, "NUM_HEADS": 8, "NUM_KV_HEADS": 8, "MLP_MULT": 3.5, "MATRIX_LR": 0.025,
    "EMA_DECAY": 0.997, "MIXER_HEAD": "multi", "NGRAM_MAX_ORDER": 7, "NGRAM_SCORING": "normalized",
    "NGRAM_EVAL_PREFILL": "none", "NGRAM_ENT_CENTER": [4.0], "QUANT_BITS": 6, "QUANT_MLP_BITS": 6,
    "QUANT_EMBED_BITS": 8, "ZSTD_LEVEL": 22, "EVAL_CHUNK_TOKENS": 32768, "EVAL_STRIDE": 64, "TTT_EPOCHS": 1,
    "TTT_OPTIMIZER": "sgd", "TTT_LR": 0.002, "TTT_PARAMS": "all",
}
# What the test runs changed from the defaults: these (and SEED) must appear in the reconstructed command.
CHANGED = {"MATRIX_LR": 0.03, "NGRAM_ENT_CENTER": [4.0, 3.5], "DATA_PATH": "/data/my shards"}
BPB_PER_NAT = 0.5917  # val_bpb / val_loss of the synthetic validation set
SEED_BPB = {1337: 1.1000, 42: 1.1012, 2025: 1.0995}
OLD_VERDICTS = ("train_time", "eval_time", "artifact_size", "scoring", "train_data_at_eval", "score_first")
VAL_TARGETS = 62_021_845
# compliance_json's record-check values of a run that is a record (contract section 2)
RECORD_VALUES = {"hardware": "8xNVIDIA_H100_80GB_HBM3", "world_size": 8, "train_cap_seconds": 600.0,
                 "scored_targets": VAL_TARGETS, "val_targets": VAL_TARGETS, "eval_max_tokens": 0,
                 "data": "fineweb verified: 80 files", "val_docs_in_train": 0, "export_fit": "yes"}
RECORD_VERDICTS = {"hardware": "hardware", "train_clock": "train_cap_seconds", "full_validation": "scored_targets",
                   "data": "data", "val_overlap": "val_docs_in_train"}


def log_text(seed: int, *, bpb: float | None = None, sha: str = SCRIPT_SHA, config: dict | None = None,
             drop: tuple[str, ...] = (), verdicts: dict | None = None, total_bytes: int = 15_900_000,
             train_seconds: float = 598.5, stop_early: bool = True, tag: str = "int6", record: dict | None = None,
             old: bool = False, code_bytes: int = len(SCRIPT_BYTES)) -> str:
    """One run's log in the contract format; `drop` removes lines by their first word.

    record: compliance_json record-check values to change (their verdicts become FAIL unless `verdicts` says
    otherwise); old: a log written before the record checks (no record keys, no prequant/export lines).
    """
    bpb = SEED_BPB.get(seed, 1.1) if bpb is None else bpb
    loss = bpb / BPB_PER_NAT
    cfg = DEFAULTS | CHANGED | {"SEED": seed, "RUN_ID": f"run_{seed}"} | (config or {})
    total_bytes += seed % 1000  # artifacts differ a little between seeds
    all_verdicts = {k: "PASS" for k in OLD_VERDICTS}
    compliance = {"train_seconds": train_seconds, "eval_seconds": 412.25, "artifact_bytes": total_bytes,
                  "scoring": cfg["NGRAM_SCORING"], "train_data_at_eval": "no", "score_first": "yes"}
    if not old:
        values = RECORD_VALUES | (record or {})
        all_verdicts |= {name: "PASS" if values[key] == RECORD_VALUES[key] else "FAIL"
                         for name, key in RECORD_VERDICTS.items()}
        compliance |= values
    all_verdicts |= verdicts or {}
    compliance["verdicts"] = all_verdicts
    if not old:
        because = [f"{k}: the log's own reason for {k}" for k, v in all_verdicts.items() if v != "PASS"]
        compliance |= {"record": not because, "not_record_because": because}
    lines = [
        "logging to logs/run.txt",
        f"source train_gpt.py sha256:{sha} bytes:{code_bytes}",
        "versions python:3.11.7 torch:2.13.0+cu128 cuda:12.8",
        "hardware world_size:8 device:cuda gpu:NVIDIA_H100_80GB_HBM3",
        "| NVIDIA-SMI 570.00   Driver Version: 570.00   CUDA Version: 12.8 |",
        "config " + json.dumps(cfg, sort_keys=True),
        "config_defaults " + json.dumps(DEFAULTS, sort_keys=True),
        "warmup_step:10/20",
        f"step:0/20000 val_loss:{4.1 / BPB_PER_NAT:.4f} val_bpb:4.1000 train_time:0ms step_avg:0.01ms",
        "step:200/20000 train_loss:2.5000 train_time:17000ms step_avg:85.00ms",
        f"step:4000/20000 val_loss:{1.18 / BPB_PER_NAT:.4f} val_bpb:1.1800 train_time:340000ms step_avg:85.00ms",
        f"step:7000/20000 train_loss:1.9000 train_time:{int(train_seconds * 1000) - 3000}ms step_avg:85.05ms",
    ]
    if stop_early:
        lines.append(f"stopping_early: wallclock_cap train_time:{int(train_seconds * 1000)}ms step:7042/20000")
    lines.append(f"step:7042/20000 val_loss:{(bpb + 0.03) / BPB_PER_NAT:.4f} val_bpb:{bpb + 0.03:.4f} "
                 f"train_time:{int(train_seconds * 1000)}ms step_avg:84.99ms")
    if not old:
        lines += [f"final_prequant val_loss:{(bpb + 0.035) / BPB_PER_NAT:.4f} val_bpb:{bpb + 0.035:.4f} "
                  "eval_time:12000ms",
                  f"final_prequant_exact val_loss:{(bpb + 0.035) / BPB_PER_NAT:.8f} val_bpb:{bpb + 0.035:.8f}",
                  f"export_fit method:gptq k_attn:12.00 k_mlp:12.50 k_embed:14.00 widen:1.000 bytes:{total_bytes} "
                  "target:16000000 tries:1 seconds:5.2",
                  f"Packed code size: {code_bytes // 3} bytes"]
    label = "int6+zstd" if old else f"gptq-{tag}+lzma"
    lines += [
        f"Serialized model {label}: {total_bytes - code_bytes} bytes",
        f"Code size: {code_bytes} bytes",
        f"Total submission size {label}: {total_bytes} bytes",
        f"final_{tag}_roundtrip val_loss:{(bpb + 0.04) / BPB_PER_NAT:.4f} val_bpb:{bpb + 0.04:.4f} eval_time:12345ms",
        f"final_{tag}_roundtrip_exact val_loss:{(bpb + 0.04) / BPB_PER_NAT:.8f} val_bpb:{bpb + 0.04:.8f}",
        f"final_{tag}_sliding_window val_loss:{(bpb + 0.02) / BPB_PER_NAT:.4f} val_bpb:{bpb + 0.02:.4f} stride:64 "
        "eval_time:90000ms",
        f"final_{tag}_sliding_window_exact val_loss:{(bpb + 0.02) / BPB_PER_NAT:.8f} val_bpb:{bpb + 0.02:.8f} "
        "stride:64",
    ]
    if not old:
        lines.append("export_cost val_bpb:+0.00500")
    lines += [
        f"legal_ttt val_loss:{loss:.4f} val_bpb:{bpb:.4f} eval_time:300000ms",
        f"legal_ttt_exact val_loss:{loss:.8f} val_bpb:{bpb:.8f}",
        f"compliance train_time {all_verdicts['train_time']} train_seconds:{train_seconds} limit:600",
        f"compliance artifact_size {all_verdicts['artifact_size']} bytes:{total_bytes} limit:16000000",
        "compliance scoring PASS normalized distribution (C1/C2)",
        "compliance_json " + json.dumps(compliance, sort_keys=True),
        "peak memory allocated: 40000 MiB",
    ]
    if not old:
        lines.append(f"result val_bpb:{bpb:.8f} (score-first, normalized) log:logs/run.txt artifact:logs/run.ptz")
    return "\n".join(line for line in lines if line.split()[0] not in drop) + "\n"


@pytest.fixture
def env(tmp_path):
    """A fake train_gpt.py, an output root, and a writer of log files under tmp_path/logs."""
    script = tmp_path / "train_gpt.py"
    script.write_bytes(SCRIPT_BYTES)
    (tmp_path / "logs").mkdir()

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
                                                          "warn": e.messages.append} | kw))
    return e


def three_logs(env, **kw) -> list[Path]:
    return [env.write(s, **kw) for s in SEED_BPB]


# ----------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------

def test_parse_log_reads_contract_lines_and_ignores_others():
    log = mr.parse_log(log_text(42))
    assert log["source"] == {"file": "train_gpt.py", "sha256": SCRIPT_SHA, "bytes": len(SCRIPT_BYTES)}
    assert log["versions"]["torch"] == "2.13.0+cu128" and log["hardware"]["world_size"] == "8"
    assert log["config"]["MATRIX_LR"] == 0.03 and log["config"]["SEED"] == 42 and log["runs"] == 1
    assert log["scores"]["legal_ttt_exact"] == {"val_loss": float(f"{1.1012 / BPB_PER_NAT:.8f}"), "val_bpb": 1.1012}
    assert log["scores"]["legal_ttt"]["eval_time_ms"] == 300000.0
    assert log["total_bytes"] == 15_900_042 and log["code_bytes"] == len(SCRIPT_BYTES)
    assert [p["step"] for p in log["val_points"]] == [0, 4000, 7042]
    assert log["val_points"][1]["train_time_ms"] == 340000.0 and log["val_points"][1]["val_bpb"] == 1.18
    assert [p["step"] for p in log["train_points"]] == [200, 7000]
    assert log["last_step"] == {"step": 7042, "total": 20000, "train_time_ms": 598500.0, "step_avg_ms": 84.99}
    assert log["stopping_early"]["step"] == 7042
    assert log["compliance"]["verdicts"]["scoring"] == "PASS" and len(log["compliance_lines"]) == 3
    assert log["where"]["legal_ttt_exact"][1].startswith("legal_ttt_exact ")
    # a `config error: ...` message is not a config line; unknown lines are ignored
    other = mr.parse_log("config error: MATRIX_LR='x'\nhello world\nstep:5/10 lr:0.1\nsource of data: x\n")
    assert other["config"] is None and other["last_step"] is None and other["source"] is None


def test_stopping_early_as_last_step_line_gives_step_avg_from_train_time():
    text = log_text(42, drop=("step:7042/20000",))
    run_log = mr.parse_log(text)
    assert run_log["last_step"]["step_avg_ms"] is None
    run = mr.Run(path=Path("x"), log=run_log, seed=42)
    assert run.steps == 7042 and run.step_avg_ms == round(598500 / 7042, 2)


def test_description_survives_a_config_with_unknown_or_missing_keys():
    assert mr.describe_config({"SEED": 1, "NEW_KNOB": 3}) == ["Evaluation: score-first chunks."]
    assert mr.technique_summary({"SEED": 1}) == "score-first eval"
    bullets = mr.describe_config(DEFAULTS | {"MIXER_HEAD": "none"})
    assert "N-gram mixer: off (the neural model alone)." in bullets and bullets[0].startswith("Model: 11 layers")
    assert mr.command_lines({"SEED": 5, "RUN_ID": "x", "NEW": True}, {"SEED": 1, "RUN_ID": ""}, [5], "1") == (
        "NEW=1 \\\nSEED=5 \\\ntorchrun --standalone --nproc_per_node=1 train_gpt.py")


def test_parse_log_refuses_malformed_known_line():
    with pytest.raises(mr.RecordError, match=r"a\.log: line 2 is malformed"):
        mr.parse_log("hello\nlegal_ttt_exact val_loss:1.8 val_bpb:oops\n", "a.log")


# ----------------------------------------------------------------------------------------------------------------
# The record folder
# ----------------------------------------------------------------------------------------------------------------

def test_three_seed_record_folder(env):
    logs = three_logs(env)
    folder = env.build(logs, blurb="Normalized mixer with TTT.")
    assert folder == env.out / "track_10min_16mb" / "2026-11-22_TestRecord"
    expected = {"README.md", "submission.json", "train_gpt.py", "train_seed1337.log", "train_seed42.log",
                "train_seed2025.log"}
    assert expected <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    assert hashlib.sha256((folder / "train_gpt.py").read_bytes()).hexdigest() == SCRIPT_SHA
    for path, seed in zip(logs, SEED_BPB):
        assert (folder / f"train_seed{seed}.log").read_bytes() == path.read_bytes()

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
    assert sub["blurb"] == "Normalized mixer with TTT."
    assert sub["hardware"] == "8x NVIDIA H100 80GB HBM3"
    assert (sub["pytorch_version"], sub["cuda_version"]) == ("2.13.0+cu128", "12.8")
    assert sub["compliance"] == {"no_hashed_ngram_cache": True, "score_first_ttt": True, "three_seeds": True,
                                 "train_under_600s": True, "eval_under_600s": True, "artifact_under_16mb": True,
                                 "no_train_data_at_eval": True, "eight_h100": True, "train_clock_capped": True,
                                 "full_validation": True, "challenge_fineweb": True, "no_val_in_train": True}
    assert sub["quantization"] == "int6"
    assert "significance" not in sub
    assert "11L 512d" in sub["technique_summary"] and "multi n-gram mixer" in sub["technique_summary"]

    readme = (folder / "README.md").read_text()
    assert "| seed | val_bpb | val_loss | artifact bytes | train s | eval s | steps | step_avg ms |" in readme
    assert "| 42 | 1.10120000 | " in readme and "| 15900042 | 598.50 | 412.25 | 7042 | 84.99 |" in readme
    assert f"| **mean** | {sub['val_bpb']:.8f} |" in readme
    command = readme.split("```bash\n")[1].split("```")[0]
    # DATA_PATH=/data/my shards was outside the repository: the command names the repository's data folder of
    # that name, and a note says where the runs read it
    assert command == ("for SEED in 1337 42 2025; do\n  DATA_PATH='./data/datasets/my shards' \\\n"
                       "  MATRIX_LR=0.03 \\\n  NGRAM_ENT_CENTER=4.0,3.5 \\\n  SEED=$SEED \\\n"
                       "  torchrun --standalone --nproc_per_node=8 train_gpt.py\ndone\n")
    assert ("The runs read DATA_PATH=/data/my shards, outside the repository (fineweb verified: 80 files); the "
            "command uses ./data/datasets/my shards") in readme
    assert "| seed | pre-quantization | int6 round-trip | export cost | int6 sliding window |" in readme
    assert "| 42 | 1.13620000 | 1.14120000 | +0.00500 | 1.12120000 | 1.10120000 |" in readme
    assert "Every record check passed for every seed." in readme and "not a record" not in readme.lower()
    assert "| 42 | 8xNVIDIA_H100_80GB_HBM3 | 600 | 62021845 / 62021845 | fineweb verified: 80 files | 0 | yes |" \
        in readme
    assert "compliance artifact_size PASS bytes:15900337 limit:16000000" in readme  # verbatim block
    assert "compliance_json" not in readme.split("## Compliance")[1].split("## Environment")[0]
    assert "11 layers, width 512" in readme and "test-time training: 1 epoch(s) of sgd" in readme
    assert "scoring normalized" in readme
    lineno = next(i for i, line in enumerate(logs[0].read_text().splitlines(), 1) if line.startswith("legal_ttt_exact"))
    assert f"- line {lineno}: `legal_ttt_exact val_loss:" in readme
    assert env.messages == []


def test_single_seed_command_and_plot_skip_without_matplotlib(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    folder = env.build([env.write(7, config={"TTT_EPOCHS": 0, "PRESET": "smoke"})])
    readme = (folder / "README.md").read_text()
    assert not (folder / "val_bpb.png").exists() and "Plot skipped: matplotlib is not installed" in readme
    command = readme.split("```bash\n")[1].split("```")[0]
    assert command.startswith("PRESET=smoke \\\n") and "TTT_EPOCHS=0 \\\n" in command
    assert command.endswith("SEED=7 \\\ntorchrun --standalone --nproc_per_node=8 train_gpt.py\n")
    assert "RUN_ID" not in command and "NUM_LAYERS" not in command
    assert "no test-time training" in readme
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["val_bpb_std"] is None and sub["compliance"]["three_seeds"] is False
    assert any("1 seed(s)" in m for m in env.messages)


def test_plot_written_when_matplotlib_installed(env):
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

def test_refuses_config_mismatch_naming_key_and_values(env):
    logs = [env.write(1337), env.write(42, config={"MATRIX_LR": 0.04, "TTT_LR": 0.5})]
    with pytest.raises(mr.RecordError, match=r"configuration: MATRIX_LR=0\.03 in .*run_1337.* but MATRIX_LR=0\.04 in"):
        env.build(logs)
    assert not env.out.exists()


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


@pytest.mark.parametrize("dropped", ["legal_ttt_exact", "final_int6_roundtrip_exact", "compliance_json"])
def test_refuses_log_without_final_line(env, dropped):
    logs = [env.write(1337), env.write(42, drop=(dropped,))]
    with pytest.raises(mr.RecordError, match=rf"run_42\.txt: no .*`{dropped}"):
        env.build(logs)


def test_refuses_failed_compliance_without_non_record(env):
    logs = [env.write(1337), env.write(42, verdicts={"train_time": "FAIL"}, train_seconds=612.0)]
    with pytest.raises(mr.RecordError) as e:
        env.build(logs)
    assert str(e.value) == ("not a record: train_time (seed 42): trained 612.0 s, over the 600 s limit; pass "
                            "--non-record to file it as a non-record submission")
    assert not env.out.exists()


def test_recheck_catches_a_pass_verdict_on_an_oversized_artifact(env):
    logs = [env.write(1337, total_bytes=16_000_001), env.write(42)]
    with pytest.raises(mr.RecordError, match=r"not a record: artifact_size \(seed 1337\): 16000338 bytes, over "
                                             r"the 16000000-byte limit \(though the log says PASS\)"):
        env.build(logs)


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


def test_refuses_log_with_two_runs_and_bad_arguments(env):
    path = env.tmp / "logs" / "twice.txt"
    path.write_text(log_text(1) + log_text(2))
    with pytest.raises(mr.RecordError, match="holds 2 runs"):
        env.build([path])
    with pytest.raises(mr.RecordError, match="--name 'my record' must be"):
        env.build([env.write(1)], name="my record")
    with pytest.raises(mr.RecordError, match="--date '2026-13-01' is not a date"):
        env.build([env.write(1)], date="2026-13-01")
    with pytest.raises(mr.RecordError, match="at least 2 seeds on each side"):
        env.build([env.write(1)], prev_record_loss=[1.9, 1.91])


def test_refuses_compliance_json_with_wrong_types_and_missing_script(env):
    path = env.write(1)
    path.write_text(path.read_text().replace('"train_seconds": 598.5', '"train_seconds": "598.5"'))
    with pytest.raises(mr.RecordError, match="train_seconds, eval_seconds and artifact_bytes must be numbers"):
        env.build([path])
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
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr == ("make_record: error: not a record: hardware: ran on 1xcpu, a record needs 8xH100; pass "
                          "--non-record to file it as a non-record submission\n")
    ok = subprocess.run(base + ["--name", "Cpu", "--non-record"] + cpu, capture_output=True, text=True)
    assert ok.returncode == 0 and (env.out / "track_non_record_16mb" / "2026-11-22_Cpu").is_dir(), ok.stderr
    script, logs = packer_logs(env, PACKER_SCRIPT)
    ok = subprocess.run([sys.executable, str(TOOL), "--name", "Packed", "--out-root", str(env.out), "--script",
                         str(script), "--packed", "--date", "2026-11-22", str(logs[0])], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    packed = (env.out / "track_10min_16mb" / "2026-11-22_Packed" / "train_gpt.py").read_bytes()
    assert packed.startswith(b"#!/usr/bin/env python3\n# train_gpt.py packed")


# ----------------------------------------------------------------------------------------------------------------
# Bit widths, the record checks, the portable command, requirements.txt and the packed script
# ----------------------------------------------------------------------------------------------------------------

REPO = TOOL.parent.parent
EXAMPLE = REPO / "records" / "track_non_record_16mb" / "2026-11-22_smoke_sample_cpu"


@pytest.mark.parametrize("tag", ["int5", "int6", "int5-6"])
def test_record_at_any_bit_width(env, tag):
    folder = env.build([env.write(s, tag=tag) for s in SEED_BPB])
    assert folder.parent.name == "track_10min_16mb"
    sub = json.loads((folder / "submission.json").read_text())
    assert sub["quantization"] == tag and f"gptq-{tag}+lzma export" in sub["technique_summary"]
    readme = (folder / "README.md").read_text()
    assert f"| seed | pre-quantization | {tag} round-trip | export cost | {tag} sliding window |" in readme
    assert f"| 1337 | 1.13500000 | 1.14000000 | +0.00500 | 1.12000000 | 1.10000000 |" in readme
    assert f"Weights exported as {tag}." in readme and f"`final_{tag}_roundtrip_exact val_loss:" in readme
    assert "- seed 42: method gptq, k_attn 12.00, k_mlp 12.50" in readme  # the export_fit line


def test_refuses_two_quantization_tags(env):
    path = env.write(42)
    path.write_text(path.read_text() + "final_int5_roundtrip_exact val_loss:1.9 val_bpb:1.12\n")
    with pytest.raises(mr.RecordError, match=r"run_42\.txt: has final_ lines of 2 quantization tags \(int6, int5\)"):
        env.build([path])
    with pytest.raises(mr.RecordError, match=r"logs disagree on the quantization: .*run_1337\.txt exported int5 but "
                                             r".*run_2025\.txt exported int6"):
        env.build([env.write(1337, tag="int5"), env.write(2025)])


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
    assert folder.parent.name == "track_non_record_16mb"
    flags = json.loads((folder / "submission.json").read_text())["compliance"]
    assert {k for k, v in flags.items() if not v} == {"eight_h100", "train_clock_capped", "full_validation",
                                                       "challenge_fineweb"}
    readme = (folder / "README.md").read_text()
    assert ("**Non-record submission**: it is not a record because\n\n- hardware: ran on 1xcpu, a record needs "
            "8xH100\n- train_clock: MAX_WALLCLOCK_SECONDS=0 (no cap)\n- full_validation: scored 16384 of 62021845 "
            "targets (EVAL_MAX_TOKENS=16384)\n- data: not the challenge's FineWeb: sample\n") in readme


def test_recheck_and_log_verdicts_both_count(env):
    logs = [env.write(1337, record={"hardware": "8xNVIDIA_A100_80GB"}, verdicts={"hardware": "PASS"}),
            env.write(42, verdicts={"val_overlap": "FAIL", "new_check": "FAIL"}),
            env.write(2025, record={"val_docs_in_train": None, "export_fit": "no"})]
    with pytest.raises(mr.RecordError) as e:
        env.build(logs)
    reasons = str(e.value).removeprefix("not a record: ").split("; ")
    assert reasons == [
        "hardware (seed 1337): ran on 8xNVIDIA_A100_80GB, a record needs 8xH100 (though the log says PASS)",
        "val_overlap (seed 42): the log's verdict is FAIL: the log's own reason for val_overlap",
        "new_check (seed 42): the log's verdict is FAIL",
        "val_overlap (seed 2025): val_docs_in_train unknown (the data's provenance record did not check it)",
        "export_fit (seed 2025): export_fit no (the export was not fitted to the byte target)",
        "pass --non-record to file it as a non-record submission"]
    flags = json.loads((env.build(logs, non_record=True) / "submission.json").read_text())["compliance"]
    assert flags["eight_h100"] is False and flags["no_val_in_train"] is False and flags["full_validation"] is True


def test_old_log_is_refused_as_record_but_accepted_as_non_record(env):
    logs = [env.write(s, old=True) for s in SEED_BPB]
    with pytest.raises(mr.RecordError, match=r"^not a record: compliance_json: lacks hardware, world_size, .*"
                                             r"\(a log from before the record checks\); rerun with the current "
                                             r"train_gpt\.py; pass --non-record"):
        env.build(logs)
    folder = env.build(logs, non_record=True)
    flags = json.loads((folder / "submission.json").read_text())["compliance"]
    assert flags["train_under_600s"] and flags["artifact_under_16mb"]
    assert not any(flags[k] for k in ("eight_h100", "train_clock_capped", "full_validation", "challenge_fineweb",
                                      "no_val_in_train"))
    readme = (folder / "README.md").read_text()
    assert "it is not a record because\n\n- compliance_json: lacks hardware" in readme
    assert "| seed | int6 round-trip | int6 sliding window | final (score-first mixer/TTT) |" in readme


def test_example_folder_logs_stay_a_valid_non_record(env):
    logs, script = sorted(EXAMPLE.glob("train_seed*.log")), EXAMPLE / "train_gpt.py"
    with pytest.raises(mr.RecordError, match="not a record: compliance_json: lacks hardware"):
        env.build(logs, script=script)
    folder = env.build(logs, script=script, non_record=True)
    sub, example = (json.loads((f / "submission.json").read_text()) for f in (folder, EXAMPLE))
    for key in ("val_bpb", "val_loss", "val_bpb_std", "bytes_total", "bytes_code", "seeds", "seed_results"):
        assert sub[key] == example[key], key
    command = (folder / "README.md").read_text().split("```bash\n")[1].split("```")[0]
    assert "DATA_PATH=./data/datasets/sample_sp1024 \\\n" in command and "/work/" not in command


def test_command_paths_are_relative_to_the_repository(env):
    repo = env.tmp / "repo"
    paths = {"DATA_PATH": str(repo / "data" / "datasets" / "fineweb10B_sp4096"),
             "TOKENIZER_PATH": "/mnt/tok/fineweb_4096_bpe.model"}
    folder = env.build([env.write(s, config=paths) for s in SEED_BPB], repo_root=repo)
    readme = (folder / "README.md").read_text()
    command = readme.split("```bash\n")[1].split("```")[0]
    assert "  DATA_PATH=./data/datasets/fineweb10B_sp4096 \\\n" in command  # inside the repository: made relative
    assert "  TOKENIZER_PATH=./data/tokenizers/fineweb_4096_bpe.model \\\n" in command  # outside: the default place
    assert str(env.tmp) not in command and "/mnt" not in command
    assert ("The runs read TOKENIZER_PATH=/mnt/tok/fineweb_4096_bpe.model, outside the repository; the command uses "
            "./data/tokenizers/fineweb_4096_bpe.model") in readme
    assert "The runs read DATA_PATH" not in readme
    # an outside folder named like the default dataset is the default: no variable, but the note says where it was
    folder = env.build([env.write(1, config={"DATA_PATH": "/scratch/fineweb10B_sp1024/"})], force=True)
    readme = (folder / "README.md").read_text()
    assert "DATA_PATH" not in readme.split("```bash\n")[1].split("```")[0]
    assert "The runs read DATA_PATH=/scratch/fineweb10B_sp1024/, outside the repository (fineweb verified: 80 " \
           "files); the command uses ./data/datasets/fineweb10B_sp1024" in readme


def test_requirements_file_lists_what_the_script_needs_beyond_torch_and_numpy(env):
    req = env.tmp / "requirements.txt"
    req.write_text("# CPU: pip install torch first\ntorch>=2.5\nnumpy\nsentencepiece\nzstandard  # compression\n\n"
                   "brotli>=1.1\n# Optional: matplotlib\n")
    folder = env.build(three_logs(env), requirements=req)
    assert (folder / "requirements.txt").read_text() == "sentencepiece\nzstandard\nbrotli>=1.1\n"
    assert "pip install -r requirements.txt` (sentencepiece, zstandard, brotli>=1.1)" in (folder / "README.md").read_text()
    req.write_text("torch\nnumpy\n")
    folder = env.build(three_logs(env), requirements=req, force=True)
    assert not (folder / "requirements.txt").exists()
    assert "requirements.txt" not in (folder / "README.md").read_text()
    folder = env.build(three_logs(env), force=True)  # default: the repository's requirements.txt
    lines = (folder / "requirements.txt").read_text().splitlines()
    assert "sentencepiece" in lines and not [x for x in lines if x.startswith(("torch", "numpy", "#"))]


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
    assert any("logged `Packed code size:" in m for m in env.messages)  # the synthetic logs state another size


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


def test_packed_refuses_a_script_that_cannot_pack_itself(env):
    with pytest.raises(mr.RecordError, match=r"--packed: --script .* has no pack_source, unpack_source, "
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
