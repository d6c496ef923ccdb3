"""Shared fixtures: the repo root on sys.path, the embedded sample dataset, a runner for train_gpt.py, a tiny model.
The test files mirror train_gpt.py's sections (test_config, test_runtime, test_data, test_model, test_optimizer,
test_ngram, test_export, test_eval, test_training, test_compliance, test_smoke for RUN)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402


def sample_paths() -> tuple[Path, Path]:
    return ROOT / "data/datasets/sample_sp1024", ROOT / "data/tokenizers/sample_1024_bpe.model"


@pytest.fixture(scope="session")
def sample_data() -> tuple[Path, Path]:
    """(DATA_PATH, TOKENIZER_PATH) of the sample that PRESET=smoke uses; built once if missing."""
    data, tok = sample_paths()
    if not (tok.exists() and list(data.glob("fineweb_val_*.bin"))):
        subprocess.run([sys.executable, str(ROOT / "data/prepare.py"), "sample"], check=True, cwd=ROOT)
    return data, tok


def run_train(tmp_path: Path, env: dict, nproc: int = 0, timeout: int = 300, script: Path | None = None,
              args: list[str] = ()) -> subprocess.CompletedProcess:
    """Run train_gpt.py (or `script`) in tmp_path (so logs/ lands there): plain python, or torchrun with nproc
    processes."""
    clean = {k: v for k, v in os.environ.items() if k not in tg.KNOB_BY_ENV}
    full_env = clean | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"} | {k: str(v) for k, v in env.items()}
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    else:
        cmd = [sys.executable]
    return subprocess.run(cmd + [str(script or ROOT / "train_gpt.py"), *args], cwd=tmp_path, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def log_value(text: str, prefix: str, key: str) -> str:
    """The value of key:VALUE on the last line that starts with prefix and has that key."""
    line = [ln for ln in text.splitlines() if ln.startswith(prefix + " ") and f" {key}:" in ln][-1]
    return next(tok.split(":", 1)[1] for tok in line.split() if tok.startswith(key + ":"))


def tiny_model(**env) -> tg.GPT:
    """A PRESET=smoke model (with env on top), seeded."""
    a = tg.load_hyperparameters({"PRESET": "smoke"} | {k: str(v) for k, v in env.items()})
    torch.manual_seed(0)
    return tg.GPT(tg.ModelConfig.from_args(a))
