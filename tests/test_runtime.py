"""RUNTIME: CPU threads, gradient accumulation by world size, and the code's bytes (the packed script)."""
import ast
import io
import os
import subprocess
import sys
import tokenize

import pytest
import torch

import train_gpt as tg
from conftest import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="the thread default is for CPU runs")
@pytest.mark.parametrize("omp, threads", [(None, 1), ("2", 2)])
def test_cpu_runs_one_thread_unless_omp_num_threads_says(tmp_path, omp, threads):
    """One thread per core oversubscribes a shared CPU (82 s instead of 28 s for PRESET=smoke on 2 busy cores)."""
    env = {k: v for k, v in os.environ.items() if k not in tg.KNOB_BY_ENV and k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, capture_output=True, text=True,
                          env=env | {"PRESET": "smoke", "TOKENIZER_PATH": "missing.model"} | (
                              {"OMP_NUM_THREADS": omp} if omp else {}), timeout=120)
    assert proc.returncode == 2 and "TOKENIZER_PATH='missing.model' does not exist" in proc.stderr
    assert f"device:cpu gpu:none cpu_threads:{threads}" in proc.stdout


def test_grad_accum_must_divide_global_batch():
    a = tg.load_hyperparameters({"TRAIN_BATCH_TOKENS": str(786432)})
    assert tg.grad_accum_steps(a, 8) == 1 and tg.grad_accum_steps(a, 2) == 4 and tg.grad_accum_steps(a, 1) == 8
    with pytest.raises(tg.UserError, match="TRAIN_BATCH_TOKENS=786432 must be divisible by world size 5"):
        tg.grad_accum_steps(a, 5)


PACKED_CODE_BUDGET = 45_000  # bytes of the packed script (what the artifact counts); 39,246 when it was set


def test_packed_code_stays_within_its_byte_budget():
    assert len(tg.pack_source((ROOT / "train_gpt.py").read_bytes())) < PACKED_CODE_BUDGET


def test_packed_source_round_trips_and_is_smaller():
    src = (ROOT / "train_gpt.py").read_bytes()
    packed = tg.pack_source(src)
    assert packed.startswith(tg.PACKED_MARKER) and len(packed) < len(src) // 3
    runnable = tg.unpack_source(packed)  # the same program without comments and docstrings
    assert runnable == tg.runnable_source(src) and tg.unpack_source(src) == src
    assert not [t for t in tokenize.tokenize(io.BytesIO(runnable).readline) if t.type == tokenize.COMMENT]
    assert ast.get_docstring(ast.parse(runnable)) == tg.__doc__  # --help prints it
    assert tg.prefill_ngram_cache.__doc__.encode()[:40] not in runnable  # function docstrings are dropped
    assert tg.hashlib.sha256(src).hexdigest().encode() in packed
    assert tg.pack_source(bytes(src)) == packed  # deterministic


def test_console_knob_line_shows_what_the_environment_set_before_the_presets(monkeypatch):
    """A sweep's knob must survive the console line's cut, however many knobs the preset changes."""
    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("TTT_EPOCHS", "0")
    a = tg.load_hyperparameters({"PRESET": "smoke", "TTT_EPOCHS": "0"})
    lines = []
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda msg, **kw: lines.append(msg), "t")
    tg.log_run_header(rt, a)
    line = next(m for m in lines if m.startswith("knobs_changed"))
    assert line.startswith("knobs_changed n:30 PRESET=smoke TTT_EPOCHS=0 BIGRAM_DIM=16 ") and line.endswith(
        "... (the log: config_changed)")
