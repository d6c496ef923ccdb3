"""A score is never computed with a tokenizer or data other than the ones it claims: the tokenizer against the shards'
provenance.json, every shard against its recorded sha256 and VOCAB_SIZE before the clock, and LOAD_ARTIFACT against
the tokenizer and data the artifact was made with (CPU, offline; the docs corpus cases skip without it)."""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import train_gpt as tg
from conftest import ROOT, SHARED_DATA, run_train

sys.path.insert(0, str(ROOT / "data"))
import prepare  # noqa: E402

DOCS = ROOT / "data/datasets/docs_sp1024"
DOCS_TOKENIZER = SHARED_DATA / "fineweb_1024_bpe.model"
needs_docs = pytest.mark.skipif(not ((DOCS / "provenance.json").is_file() and DOCS_TOKENIZER.is_file()),
                                reason="docs corpus (data/datasets/docs_sp1024, ../shared/data) not built")
TINY = {"PRESET": "smoke", "ITERATIONS": "2", "TTT_EPOCHS": "0", "EVAL_MAX_TOKENS": "1024",
        "NGRAM_AUDIT_POSITIONS": "0", "GPTQ_CALIBRATION_TOKENS": "4096"}  # an artifact in ~10 s


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def copy_sample(sample_data, dest: Path, provenance: bool = True) -> Path:
    dest.mkdir()
    for f in sample_data[0].glob("fineweb_*.bin"):
        shutil.copy(f, dest / f.name)
    if provenance:
        shutil.copy(sample_data[0] / "provenance.json", dest / "provenance.json")
    return dest


def started_the_clock(proc) -> bool:
    return any(line.startswith(("ngram_prefill", "step:")) for line in proc.stdout.splitlines())


@pytest.fixture(scope="module")
def tokenizer_2048(tmp_path_factory) -> Path:
    """A 2048-piece tokenizer with the challenge's spec, trained on this repository's own text (about a second)."""
    path = tmp_path_factory.mktemp("tok") / "tok_2048.model"
    texts = [p.read_text() for p in [ROOT / "train_gpt.py", ROOT / "README.md", ROOT / "data/prepare.py",
                                     *sorted((ROOT / "tests").glob("*.py"))]]
    prepare.train_tokenizer(prepare.training_lines(texts, 10**7), 2048, path)
    return path


@pytest.fixture(scope="module")
def sample_artifact(sample_data, tmp_path_factory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("sample_artifact")
    proc = run_train(tmp, TINY | {"RUN_ID": "s"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp, proc


# ---- the tokenizer against the shards --------------------------------------------------------------------------

@needs_docs
def test_smoke_preset_on_the_docs_data_needs_its_tokenizer(tmp_path):
    line = one_line_error(run_train(tmp_path, {"PRESET": "smoke", "DATA_PATH": str(DOCS)}))
    assert line == (f"error: TOKENIZER_PATH={ROOT}/data/tokenizers/sample_1024_bpe.model is not the tokenizer "
                    f"DATA_PATH={DOCS} was made with ({DOCS}/provenance.json names {DOCS_TOKENIZER.resolve()}); set "
                    "TOKENIZER_PATH to that file")


def test_a_bigger_vocabulary_on_shards_of_another_tokenizer_stops(sample_data, tokenizer_2048, tmp_path):
    """VOCAB_SIZE=2048 with a 2048-piece tokenizer on shards made with the 1024 one: every id is < 2048, so only the
    provenance can tell (it scored 3.36 bits per byte of another tokenizer's pieces before)."""
    line = one_line_error(run_train(tmp_path, {"PRESET": "smoke", "VOCAB_SIZE": "2048",
                                               "TOKENIZER_PATH": str(tokenizer_2048)}))
    assert f"TOKENIZER_PATH={tokenizer_2048} is not the tokenizer DATA_PATH=" in line
    assert "names data/tokenizers/sample_1024_bpe.model); set TOKENIZER_PATH to that file" in line


# ---- every shard, before the clock -----------------------------------------------------------------------------

@pytest.mark.parametrize("case, nproc", [("changed", 0), ("unlisted", 0), ("changed", 2)])
def test_a_shard_that_is_not_what_provenance_says_stops_before_the_clock(sample_data, tmp_path, case, nproc):
    """Any kind of data (here the sample, not fineweb): a changed byte or a shard provenance.json does not list. With
    two ranks, rank 0's finding stops both (no rank left waiting in a collective)."""
    data = copy_sample(sample_data, tmp_path / "data")
    shard = data / "fineweb_train_000002.bin"
    if case == "changed":
        tokens = tg.read_shard(shard)
        tokens[-1] = (tokens[-1] + 1) % 1024  # still a valid id: only the hash can tell
        tg.write_shard(shard, tokens)
    else:
        shutil.copy(shard, data / "fineweb_train_000003.bin")
    proc = run_train(tmp_path, {"PRESET": "smoke", "DATA_PATH": str(data)}, nproc=nproc, timeout=120)
    what = {"changed": "fineweb_train_000002.bin: sha256 differs from", "unlisted": "fineweb_train_000003.bin: not "
            "listed in"}[case]
    line = (f"error: {data}/{what} {data}/provenance.json; the shards changed since data/prepare.py wrote it: run it "
            "again (or delete provenance.json to run on unverified data)")
    if nproc:
        assert proc.returncode != 0 and proc.stderr.count(line) >= 2, proc.stderr[-3000:]  # each rank, its summary
    else:
        assert one_line_error(proc) == line
    assert not started_the_clock(proc)


def test_a_token_past_the_vocabulary_in_the_last_shard_stops_before_the_clock(sample_data, tmp_path):
    """No provenance to compare against: the largest id of every shard is still checked before the clock, not when
    the loader reaches the shard."""
    data = copy_sample(sample_data, tmp_path / "data", provenance=False)
    shard = data / "fineweb_train_000002.bin"
    tokens = tg.read_shard(shard)
    tokens[5] = 1500
    tg.write_shard(shard, tokens)
    proc = run_train(tmp_path, {"PRESET": "smoke", "DATA_PATH": str(data)})
    assert one_line_error(proc) == (f"error: {shard}: token id 1500 >= VOCAB_SIZE=1024; wrong tokenizer or vocab")
    assert not started_the_clock(proc)


# ---- LOAD_ARTIFACT against what the artifact was made with -------------------------------------------------------

def test_the_artifact_records_its_tokenizer_and_data(sample_data, sample_artifact):
    tmp, _ = sample_artifact
    data, tok = sample_data
    _, _, settings = tg.deserialize_artifact((tmp / "logs/s.ptz").read_bytes(), "s.ptz")
    listed = json.loads((data / "provenance.json").read_text())["files"]
    val = np.concatenate([tg.read_shard(f) for f in tg.list_shards(str(data), "val")])
    tables = tg.ByteTables.from_tokenizer(tg.load_tokenizer(str(tok), 1024), 1024)
    assert settings["identity"] == {
        "TOKENIZER_PATH": str(tok), "tokenizer_sha256": hashlib.sha256(tok.read_bytes()).hexdigest(),
        "byte_tables_sha256": tables.sha256(), "DATA_PATH": str(data), "data_kind": "sample",
        "data_files_sha256": hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest(),
        "val_sha256": hashlib.sha256(val.astype(np.uint16).tobytes()).hexdigest()}


@needs_docs
def test_an_artifact_under_another_tokenizer_names_its_own_paths(sample_data, sample_artifact):
    tmp, _ = sample_artifact
    data, tok = sample_data
    line = one_line_error(run_train(tmp, {"LOAD_ARTIFACT": "logs/s.ptz", "DATA_PATH": str(DOCS),
                                          "TOKENIZER_PATH": str(DOCS_TOKENIZER)}))
    assert line == (f"error: LOAD_ARTIFACT=logs/s.ptz was made with TOKENIZER_PATH={tok} DATA_PATH={data}, but "
                    f"TOKENIZER_PATH={DOCS_TOKENIZER} is another tokenizer (sha256 "
                    f"{hashlib.sha256(DOCS_TOKENIZER.read_bytes()).hexdigest()[:12]}, not "
                    f"{hashlib.sha256(tok.read_bytes()).hexdigest()[:12]}); set both")


@needs_docs
def test_a_docs_artifact_under_the_smoke_preset_says_what_to_set_and_then_reproduces(tmp_path):
    """The preset's sample tokenizer must not score a docs-trained model (3.78 instead of its own score before);
    the paths the error names make the same command reproduce the training run's numbers exactly."""
    env = TINY | {"RUN_ID": "d", "DATA_PATH": str(DOCS), "TOKENIZER_PATH": str(DOCS_TOKENIZER)}
    trained = run_train(tmp_path, env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    line = one_line_error(run_train(tmp_path, {"PRESET": "smoke", "LOAD_ARTIFACT": "logs/d.ptz"}))
    assert f"made with TOKENIZER_PATH={DOCS_TOKENIZER} DATA_PATH={DOCS}, but" in line
    again = run_train(tmp_path, {"PRESET": "smoke", "LOAD_ARTIFACT": "logs/d.ptz", "DATA_PATH": str(DOCS),
                                 "TOKENIZER_PATH": str(DOCS_TOKENIZER), "RUN_ID": "d_eval"})
    assert again.returncode == 0, again.stderr[-2000:]
    exact = [ln for ln in trained.stdout.splitlines() if "_exact " in ln and "prequant" not in ln]
    assert exact and all(ln in again.stdout.splitlines() for ln in exact)
    assert "WARNING" not in again.stdout


def test_another_validation_split_of_the_same_tokenizer_is_named(sample_data, sample_artifact):
    """Scoring a model on other text of its own tokenizer is a fair measurement, so it runs, with a warning that
    the split is not the one the artifact was made with."""
    tmp, _ = sample_artifact
    data = copy_sample(sample_data, tmp / "other_val", provenance=False)
    val = data / "fineweb_val_000000.bin"
    tg.write_shard(val, tg.read_shard(val)[:20000])
    proc = run_train(tmp, {"LOAD_ARTIFACT": "logs/s.ptz", "DATA_PATH": str(data), "TOKENIZER_PATH": str(sample_data[1]),
                           "RUN_ID": "other"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"WARNING DATA_PATH={data} is not the validation split logs/s.ptz was made with (DATA_PATH="
            f"{sample_data[0]}, sample): its scores are on other text") in proc.stdout
