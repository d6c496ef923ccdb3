"""COMPLIANCE: each verdict flips at its limit and says what was measured (SKIP, never PASS, when it was not); the
result line beside the network's own score."""
import torch

import train_gpt as tg


def record_report(monkeypatch, env=None, train_s=599.0, eval_s=599.0, model_bytes=15_000_000, world=8,
                  gpu="NVIDIA_H100_80GB_HBM3", data=("fineweb verified: 81 files", True, 0), scored=62_000_000,
                  projections=(100.0, 150.0, 340.0), export=True):
    a = tg.load_hyperparameters(env or {})
    monkeypatch.setattr(tg, "device_name", lambda rt: gpu)
    rt = tg.Runtime(0, world, 0, torch.device("cpu"), lambda m, console=True: None, "t")
    rt.summary["scores"] = {k: {"projection_8gpu_s": s} for k, s in zip(("roundtrip", "sliding", "legal_ttt"), projections)}
    code = tg.code_sizes()[0]
    if export:
        rt.summary["export"] = {"bytes": model_bytes, "target": 16_000_000}
    evaluation = dict(eval_seconds=eval_s, scored_targets=scored, a=a)
    return tg.compliance_report(a, rt, train_s, evaluation, model_bytes - code, data, 62_000_000)


def test_compliance_verdicts_flip_at_each_limit(monkeypatch):
    r = record_report(monkeypatch, model_bytes=16_000_000)
    assert set(r["verdicts"].values()) == {"PASS"} and r["record"] and r["not_record_because"] == []
    r = record_report(monkeypatch, train_s=601.0, eval_s=600.5, model_bytes=16_000_001)
    assert (r["verdicts"]["train_time"], r["verdicts"]["eval_time"], r["verdicts"]["artifact_size"]) == ("FAIL",) * 3
    leaky = record_report(monkeypatch, {"NGRAM_SCORING": "hashed_target", "NGRAM_EVAL_PREFILL": "train"})
    assert leaky["verdicts"]["scoring"] == "FAIL" and leaky["verdicts"]["train_data_at_eval"] == "FAIL"
    assert leaky["scoring"] == "hashed_target" and leaky["train_data_at_eval"] == "yes"
    assert record_report(monkeypatch, train_s=None)["verdicts"]["train_time"] == "SKIP"


def test_a_smoke_like_run_is_refused_as_a_record_with_each_reason(monkeypatch):
    """The review's case: one CPU, the sample data, no wallclock cap and part of the validation split."""
    r = record_report(monkeypatch, {"MAX_WALLCLOCK_SECONDS": "0", "EVAL_MAX_TOKENS": "16384"}, world=1, gpu="cpu",
                      data=("not the challenge's FineWeb: sample data", False, 0), scored=16384)
    assert not r["record"]
    reasons = " | ".join(r["not_record_because"])
    for fragment in ("hardware: ran on 1xcpu; a record needs 8xH100", "train_clock: MAX_WALLCLOCK_SECONDS=0",
                     "full_validation: scored 16384 of the split's 62000000", "data: not the challenge's FineWeb",
                     "val_overlap"):
        assert fragment in reasons
    assert {k for k, v in r["verdicts"].items() if v != "PASS"} == {"hardware", "train_clock", "full_validation",
                                                                    "data", "val_overlap", "eval_time"}
    assert r["verdicts"]["eval_time"] == r["verdicts"]["val_overlap"] == "SKIP"  # not measured: never PASS
    assert not record_report(monkeypatch, world=8, gpu="NVIDIA_A100")["record"]


def test_compliance_lines_say_what_was_measured(monkeypatch, tmp_path):
    """No PASS for what was not measured: a CPU's eval time, a slice judged on its full-split projection, the overlap
    of unverified data; an uncapped clock says so; export_fit is the fit's own bytes against its target."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").mkdir()
    def lines(r):
        out = []
        rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda m, console=True: out.append((m, console)), "t")
        tg.log_compliance(rt, r)
        return {m.split()[1].split(":")[0]: m for m, console in out if m.startswith("compliance ")}, out
    cpu = record_report(monkeypatch, {"MAX_WALLCLOCK_SECONDS": "0", "EVAL_MAX_TOKENS": "16384"}, world=1, gpu="cpu",
                        eval_s=2.4, data=("not the challenge's FineWeb: sample data", False, 0), scored=16384)
    shown, out = lines(cpu)
    assert shown["eval_time"].endswith("(not measured on the challenge's hardware) limit:600s SKIP")
    assert shown["train_clock"] == "compliance train_clock:uncapped limit:600s FAIL"
    assert shown["val_docs_in_train"] == "compliance val_docs_in_train:0 (unverified data) SKIP"
    assert shown["export_fit"] == "compliance export_fit:yes" and "score_first" not in shown
    assert [console for m, console in out if m.startswith("compliance_json ")] == [False]  # the log file only
    # a GPU slice: 2.4 s measured, but 64,506 s projected for the whole split, fails
    gpu = record_report(monkeypatch, {"EVAL_MAX_TOKENS": "16384"}, world=1, eval_s=2.4, scored=16384,
                        projections=(300.0, 400.0, 63806.0))
    assert gpu["verdicts"]["eval_time"] == "FAIL" and gpu["eval_projection_seconds"] == 64506.0
    assert "eval_time: 64506.0s projected for the full split on 8 GPUs (limit 600s)" in gpu["not_record_because"]
    assert "projected_full_8gpu:64506.0s" in lines(gpu)[0]["eval_time"]
    full = record_report(monkeypatch)  # all of the split on 8 GPUs: the clock itself
    assert full["verdicts"]["eval_time"] == "PASS" and full["eval_projection_seconds"] is None
    assert record_report(monkeypatch, model_bytes=16_000_001)["export_fit"] == "no"
    assert record_report(monkeypatch, export=False)["export_fit"] is None  # LOAD_ARTIFACT: nothing was fitted


def test_result_line_shows_the_network_alone_and_warns_when_the_mixer_hurt():
    out = []
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda m, console=True: out.append(m), "w")
    rt.summary["scores"] = {"sliding": {"val_bpb": 3.1522}}
    a = tg.load_hyperparameters({})
    worse = tg.EvalResult("legal_ttt", 5.4, 3.2176, 1.0, 1.0, [])
    tg.log_result(rt, a, worse, "logs/w.ptz")
    assert out[0] == ("WARNING the mixer and TTT made the score worse: val_bpb 3.2176 against the network's own "
                      "sliding window 3.1522 (+0.0654); compare MIXER_HEAD=none")
    assert out[1] == ("result val_bpb:3.21760000 (score-first, normalized, TTT) network_sliding_bpb:3.15220000 "
                      "log:logs/w.txt artifact:logs/w.ptz")
    out.clear()
    tg.log_result(rt, a, tg.EvalResult("legal_ttt", 5.4, 3.1, 1.0, 1.0, []), "logs/w.ptz")
    assert len(out) == 1 and out[0].startswith("result val_bpb:3.10000000")
