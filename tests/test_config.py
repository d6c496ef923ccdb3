"""CONFIG: knob parsing, presets, relations between knobs, typos and retired names, the --help table."""
import os
import subprocess
import sys

import pytest

import train_gpt as tg
from conftest import ROOT


@pytest.mark.parametrize("env, fragment", [
    ({"MATRIX_LR": "abc"}, "MATRIX_LR='abc' is not a valid float"),
    ({"NUM_LAYERS": "0"}, "NUM_LAYERS='0' is out of range"),
    ({"TRAIN_BATCH_TOKENS": "1000"}, "TRAIN_BATCH_TOKENS=1000 must be a multiple of TRAIN_SEQ_LEN=2048"),
    ({"MIXER_HEAD": "mlp"}, "MIXER_HEAD='mlp' is not a known choice"),
    ({"NGRAM_MAX_ORDRE": "9"}, "did you mean NGRAM_MAX_ORDER?"),
    ({"TTT_EPOCH": "1"}, "did you mean TTT_EPOCHS?"),
    ({"NGRAM_BUCKETS": "1000"}, "NGRAM_BUCKETS=1000 must be a power of two"),
    ({"NGRAM_MAX_ORDER": "9", "NGRAM_ENT_CENTER": "1,2,3"}, "must list 1 or 8 centers"),
    ({"EMA_DECAY": "1.5"}, "EMA_DECAY='1.5' is out of range"),
    ({"FINAL_WEIGHTS": "swa", "SWA_START_LRMUL": "0"}, "FINAL_WEIGHTS='swa' needs SWA snapshots"),
    ({"FINAL_WEIGHTS": "swa", "WARMDOWN_FRAC": "0"}, "FINAL_WEIGHTS='swa' needs SWA snapshots"),
    # every typo, not only under a hand-kept prefix list: spelling, case, a knob's first word, a retired knob's prefix
    ({"ITERATONS": "5"}, "unknown variable ITERATONS='5'; did you mean ITERATIONS?"),
    ({"MAX_WALLCLOCK_SECOND": "5"}, "did you mean MAX_WALLCLOCK_SECONDS?"),
    ({"DATA_PAHT": ".."}, "did you mean DATA_PATH?"),
    ({"SEEDS": "7"}, "unknown variable SEEDS='7'; did you mean SEED?"),
    ({"TOKENIZER": "t.model"}, "did you mean TOKENIZER_PATH?"),
    ({"matrix_lr": "0.5"}, "unknown variable matrix_lr='0.5'; did you mean MATRIX_LR?"),
    ({"LOAD_ARTFACT": "run.ptz"}, "did you mean LOAD_ARTIFACT?"),
    ({"LATE_QAT": "1"}, "unknown variable LATE_QAT='1'"),
    ({"EMA_ENABLED": "1"}, "unknown variable EMA_ENABLED='1'"),
    ({"LOAD_ARTIFACT": "run.ptz", "MODEL_DIM": "256", "TRAIN_SEQ_LEN": "1024"},
     "MODEL_DIM, TRAIN_SEQ_LEN set with LOAD_ARTIFACT, which fixes the model's shape and vocabulary; unset them"),
])
def test_bad_config_is_one_line_error(env, fragment):
    with pytest.raises(tg.UserError, match=fragment.replace("?", r"\?").replace("(", r"\(")):
        tg.load_hyperparameters(env)


@pytest.mark.parametrize("name, value, line", [
    ("NGRAM_MAX_ORDRE", "9", "unknown variable NGRAM_MAX_ORDRE='9'; did you mean NGRAM_MAX_ORDER?"),
    ("LOAD_ARTFACT", "run.ptz", "unknown variable LOAD_ARTFACT='run.ptz'; did you mean LOAD_ARTIFACT?"),  # not a
])                                                                                              # 10-minute training run
def test_bad_config_exits_2_before_any_work(tmp_path, name, value, line):
    proc = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", name: value, "DATA_PATH": "/nonexistent"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: config error: " + line]
    assert not (tmp_path / "logs").exists()  # stopped before creating a log, touching data or building a model


def test_a_real_launch_environment_is_not_mistaken_for_typos(tmp_path):
    """os.environ as torchrun gives it to a rank, plus what CUDA machines, shells, schedulers and benches set."""
    script = tmp_path / "env.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r}); import os, train_gpt as tg\n"
                      "a = tg.load_hyperparameters(dict(os.environ) | {'PRESET': 'smoke'}); print('ok', a.preset)\n")
    ordinary = {k: "0" for k in (
        "CUDA_VISIBLE_DEVICES CUDA_LAUNCH_BLOCKING NCCL_DEBUG NCCL_IB_DISABLE NCCL_P2P_DISABLE NCCL_SOCKET_IFNAME "
        "TORCH_NCCL_ASYNC_ERROR_HANDLING TORCHINDUCTOR_FX_GRAPH_CACHE CUBLAS_WORKSPACE_CONFIG MKL_NUM_THREADS "
        "PYTHONHASHSEED HF_HUB_OFFLINE TOKENIZERS_PARALLELISM WANDB_API_KEY WANDB_PROJECT SLURM_JOB_ID SLURM_PROCID "
        "NODE_RANK NNODES MAX_JOBS NVIDIA_VISIBLE_DEVICES BENCH_TOKENS BENCH_ROWS PREFLIGHT_SECONDS").split()} | {
        "TORCH_DISTRIBUTED_DEBUG": "OFF", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC", "TMPDIR": str(tmp_path),
        "HF_HOME": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "TRITON_CACHE_DIR": str(tmp_path),
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "CUDA_HOME": "/usr/local/cuda", "VIRTUAL_ENV": "/venv"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           str(script)], env={k: v for k, v in os.environ.items() if k not in tg.KNOB_BY_ENV}
                          | ordinary | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok smoke" in proc.stdout, proc.stderr[-2000:]


def test_parsing_types_presets_and_overrides():
    a = tg.load_hyperparameters({"USE_THIS": "ignored", "TTT_PARAMS": "q", "NGRAM_ENT_CENTER": "2.6, 2.8,3.0,3.2,3.5,3.8",
                                 "PRESET": "smoke", "NUM_LAYERS": "3"})
    assert a.ttt_params == "q" and a.ngram_ent_center == [2.6, 2.8, 3.0, 3.2, 3.5, 3.8]
    assert a.num_layers == 3 and a.model_dim == 64  # explicit env beats the preset; the preset beats defaults
    d = tg.load_hyperparameters({})
    assert (d.num_layers, d.model_dim, d.num_heads, d.num_kv_heads, d.mlp_mult) == (11, 512, 8, 8, 3.5)
    assert (d.train_seq_len, d.train_batch_tokens, d.matrix_lr, d.max_wallclock_seconds) == (2048, 786432, 0.025, 600)


def test_help_lists_every_knob_and_matches_readme():
    proc = subprocess.run([sys.executable, str(ROOT / "train_gpt.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for env in tg.KNOB_BY_ENV:
        assert f"`{env}`" in proc.stdout
    readme = (ROOT / "README.md").read_text()
    assert tg.help_table() in readme, "README's configuration table is stale: paste python3 train_gpt.py --help"


@pytest.mark.parametrize("env, fragment", [
    ({"WARMDOWN_ITERS": "3500"}, "WARMDOWN_ITERS is no longer read; use WARMDOWN_FRAC"),
    ({"LATE_QAT_LRMUL": "0.15"}, "late QAT was removed"),
])
def test_retired_knobs_say_what_replaced_them(env, fragment):
    with pytest.raises(tg.UserError, match=fragment):
        tg.load_hyperparameters(env)


def test_final_weights_that_cannot_exist_are_refused_at_start_up():
    with pytest.raises(tg.UserError, match="FINAL_WEIGHTS.*SWA_EVERY"):
        tg.load_hyperparameters({"FINAL_WEIGHTS": "swa", "SWA_EVERY": "0"})
    with pytest.raises(tg.UserError, match="FINAL_WEIGHTS.*EMA_DECAY"):
        tg.load_hyperparameters({"FINAL_WEIGHTS": "ema", "EMA_DECAY": "0"})
