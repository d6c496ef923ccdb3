"""Tests for data/prepare.py and the shard format / byte accounting it shares with train_gpt.py (CPU, offline).

The shared-corpus tests use ../shared/data (the challenge tokenizer and a 9,563-document corpus) and skip without it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "data"))
import prepare  # noqa: E402
from train_gpt import BOS_ID, ByteTables, UserError, list_shards, read_shard, write_shard  # noqa: E402

SHARED_TOKENIZER = SHARED / "fineweb_1024_bpe.model"
SHARED_CORPUS = SHARED / "docs_corpus.jsonl.zst"
needs_shared = pytest.mark.skipif(not (SHARED_TOKENIZER.is_file() and SHARED_CORPUS.is_file()),
                                  reason=f"shared data not found at {SHARED}")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "data" / "prepare.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def split_tokens(folder: Path, split: str) -> np.ndarray:
    return np.concatenate([read_shard(f) for f in list_shards(str(folder), split)])


def file_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """Build the real data/datasets/sample_sp1024 and tokenizer (what PRESET=smoke reads); returns data/."""
    r = run_cli("sample")
    assert r.returncode == 0, r.stderr
    return REPO / "data"


@pytest.fixture(scope="session")
def sample_docs() -> list[tuple[str, str]]:
    return prepare.sample_documents()


@pytest.fixture(scope="session")
def sample_sp(sample_root):
    return prepare.load_sp(sample_root / "tokenizers" / "sample_1024_bpe.model")


# ----------------------------------------------------------------------------------------------------------------
# sample
# ----------------------------------------------------------------------------------------------------------------

def test_sample_is_deterministic_and_complete(sample_root, sample_docs, tmp_path):
    r = run_cli("sample", "--data-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    repo_files = {k: v for k, v in file_digests(sample_root).items()
                  if k.startswith(("datasets/sample_sp1024/", "tokenizers/sample_1024_bpe.model"))}
    assert repo_files == file_digests(tmp_path)  # byte-identical across two runs
    assert "datasets/sample_sp1024/fineweb_val_000000.bin" in repo_files
    assert "datasets/sample_sp1024/fineweb_train_000001.bin" in repo_files  # several train shards
    folder = tmp_path / "datasets" / "sample_sp1024"
    val, train = split_tokens(folder, "val"), split_tokens(folder, "train")
    assert val[0] == BOS_ID and train[0] == BOS_ID
    assert val.size >= 50_000 and train.size >= 800_000
    assert int(val.max()) < 1024 and int(train.max()) < 1024
    docs = sample_docs
    n_val = len(docs) // 10
    assert int((val == BOS_ID).sum()) == n_val and int((train == BOS_ID).sum()) == len(docs) - n_val
    assert f"val: {n_val:,} documents, {val.size:,} tokens" in r.stdout
    assert f"train: {len(docs) - n_val:,} documents, {train.size:,} tokens" in r.stdout


def proto_fields(buf: bytes) -> dict[int, object]:
    """Top-level fields of a serialized protobuf message (varint, fixed32 as float, bytes); last value wins."""
    def varint(i):
        value = shift = 0
        while True:
            value, shift, i = value | (buf[i] & 0x7F) << shift, shift + 7, i + 1
            if buf[i - 1] < 0x80:
                return value, i
    fields, i = {}, 0
    while i < len(buf):
        key, i = varint(i)
        kind = key & 7
        if kind == 0:
            fields[key >> 3], i = varint(i)
        elif kind == 5:
            fields[key >> 3], i = float(np.frombuffer(buf[i:i + 4], "<f4")[0]), i + 4
        elif kind == 2:
            n, i = varint(i)
            fields[key >> 3], i = buf[i:i + n], i + n
        else:
            raise AssertionError(f"unexpected wire type {kind}")
    return fields


def test_sample_tokenizer_model_records_the_training_spec(sample_root):
    model = proto_fields((sample_root / "tokenizers" / "sample_1024_bpe.model").read_bytes())
    trainer, normalizer = proto_fields(model[2]), proto_fields(model[3])  # ModelProto.trainer/normalizer_spec
    # TrainerSpec: model_type=3 (2 = BPE), vocab_size=4, character_coverage=10, split_digits=25, byte_fallback=35,
    # unk/bos/eos/pad ids=40-43, num_threads=16. NormalizerSpec: name=1, add_dummy_prefix=3.
    assert (trainer[3], trainer[4], trainer[25], trainer[35], trainer[16]) == (2, 1024, 1, 1, 1)
    assert abs(trainer[10] - 0.999) < 1e-6 and [trainer[k] for k in (43, 41, 42, 40)] == [0, 1, 2, 3]
    assert normalizer[1] == b"nmt_nfkc" and normalizer[3] == 0


def test_sample_tokenizer_has_the_challenge_spec(sample_sp):
    assert sample_sp.vocab_size() == 1024
    assert [sample_sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert sample_sp.bos_id() == BOS_ID
    assert sum(sample_sp.is_byte(i) for i in range(1024)) == 256  # byte_fallback
    assert sample_sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]  # split_digits
    assert not sample_sp.encode("the", out_type=str)[0].startswith("\u2581")  # no dummy prefix
    assert sample_sp.unk_id() not in sample_sp.encode("snowman \u2603 and \U0001f600")  # bytes, never unk


def test_sample_documents_are_prose_from_the_stdlib(sample_docs):
    names = [n for n, _ in sample_docs]
    assert len(names) == len(set(names)) and len(names) > 300
    assert any(n.startswith("pydoc topic ") for n in names) and "stdlib json/encoder.py" in names
    assert not any("/test" in n or n.startswith(("stdlib tkinter", "stdlib idlelib")) for n in names)
    encoder = dict(sample_docs)["stdlib json/encoder.py"]
    assert encoder.startswith("Implementation of JSONEncoder") and "import re" not in encoder  # prose, not code
    assert names != sorted(names)  # a fixed shuffle, so validation is not just the alphabetically first modules


# ----------------------------------------------------------------------------------------------------------------
# byte accounting: per document, the tables' bytes equal what the tokenizer decodes to
# ----------------------------------------------------------------------------------------------------------------

def doc_target_bytes(tables: ByteTables, ids: list[int]) -> int:
    doc = torch.tensor([BOS_ID] + ids)
    return int(tables.target_bytes(doc[:-1], doc[1:]).sum())


def decoded_bytes(sp, tables: ByteTables, ids: list[int]) -> int:
    """UTF-8 bytes of sp.decode, decoding separately between boundary tokens (unknown pieces count 0 bytes).

    Without boundary tokens in ids this is exactly len(sp.decode(ids).encode()). The challenge's rule gives an
    unknown token 0 bytes and drops the next token's leading space, which is what sentencepiece's decoder does at
    the start of a sequence, hence decoding each stretch between boundaries on its own.
    """
    total, stretch = 0, []
    for i in ids + [BOS_ID]:
        if bool(tables.is_boundary[i]):
            total += len(sp.decode(stretch).encode("utf-8"))
            stretch = []
        else:
            stretch.append(i)
    return total


def test_byte_accounting_matches_decode_on_sample_tokenizer(sample_sp, sample_docs):
    tables = ByteTables.from_tokenizer(sample_sp, 1024)
    texts = [t for _, t in sample_docs[:150]]
    texts += ["na\u00efve caf\u00e9 \u65e5\u672c\u8a9e \u2603 \U0001f389  spaced   out\ttabs\nline", " leading space"]
    byte_tokens = 0
    for text in texts:
        ids = sample_sp.encode(text)
        assert sample_sp.unk_id() not in ids
        assert doc_target_bytes(tables, ids) == len(sample_sp.decode(ids).encode("utf-8")), text[:80]
        byte_tokens += sum(sample_sp.is_byte(i) for i in ids)
    assert byte_tokens > 0  # the byte-fallback path was exercised


def test_boundary_rule_counts_space_only_after_a_real_token(sample_sp):
    tables = ByteTables.from_tokenizer(sample_sp, 1024)
    the = sample_sp.piece_to_id("\u2581the")
    a = sample_sp.piece_to_id("a")
    assert the != sample_sp.unk_id() and a != sample_sp.unk_id()
    prev, target = torch.tensor([BOS_ID, a, sample_sp.unk_id()]), torch.tensor([the, the, the])
    assert tables.target_bytes(prev, target).tolist() == [3, 4, 3]
    assert int(tables.base_bytes[BOS_ID]) == 0 and bool(tables.is_boundary[BOS_ID])


@needs_shared
def test_byte_accounting_matches_decode_on_challenge_tokenizer():
    sp = prepare.load_sp(SHARED_TOKENIZER)
    tables = ByteTables.from_tokenizer(sp, 1024)
    texts = []
    for text in prepare.read_documents([SHARED_CORPUS], "text"):
        texts.append(text)
        if len(texts) == 200:
            break
    without_unknown = 0
    for text in texts:
        ids = sp.encode(text)
        assert doc_target_bytes(tables, ids) == decoded_bytes(sp, tables, ids), text[:80]
        if sp.unk_id() not in ids:
            without_unknown += 1
            assert doc_target_bytes(tables, ids) == len(sp.decode(ids).encode("utf-8"))
    assert without_unknown >= 1  # the challenge model has no byte fallback: most documents contain <unk>


# ----------------------------------------------------------------------------------------------------------------
# shard format
# ----------------------------------------------------------------------------------------------------------------

def test_shard_round_trip_and_exact_layout(tmp_path):
    tokens = np.array([BOS_ID, 5, 1023, 0, 65535], dtype=np.uint16)
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, tokens)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 5] and not header[3:].any()
    assert raw[1024:] == tokens.astype("<u2").tobytes() and len(raw) == 1024 + 10
    assert read_shard(path).tolist() == tokens.tolist()
    write_shard(path, np.array([], dtype=np.uint16))
    assert read_shard(path).size == 0


def malformed(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"{case}.bin"
    write_shard(path, np.arange(100, dtype=np.uint16))
    raw = bytearray(path.read_bytes())
    if case == "magic":
        raw[:4] = np.array([12345], "<i4").tobytes()
    elif case == "version":
        raw[4:8] = np.array([7], "<i4").tobytes()
    elif case == "truncated":
        raw = raw[:-6]
    elif case == "header":
        raw = raw[:100]
    elif case == "missing":
        return tmp_path / "nope.bin"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("case,vocab,expect", [
    ("magic", None, "wrong magic 12345"),
    ("version", None, "unsupported version 7"),
    ("truncated", None, "truncated or corrupt"),
    ("header", None, "only 100 bytes"),
    ("missing", None, "missing"),
    ("ok", 50, "token id 99 >= VOCAB_SIZE=50"),
])
def test_malformed_shards_give_one_line_errors(tmp_path, case, vocab, expect):
    path = malformed(tmp_path, case)
    with pytest.raises(UserError) as err:
        read_shard(path, vocab)
    assert expect in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_cli_user_errors_are_one_line_exit_2(tmp_path, capsys):
    for args, expect in [  # as a real process: exit code and stderr exactly as a user sees them
        (("corpus", tmp_path / "missing.jsonl", "--tokenizer", "x.model", "--out", tmp_path / "o"), "no such file"),
        (("corpus", "--out", tmp_path / "o"), "the following arguments are required: inputs"),
    ]:
        r = run_cli(*args)
        assert r.returncode == 2 and expect in r.stderr, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    for argv, expect in [
        (["corpus", str(tmp_path / "data.csv"), "--vocab-size", "300", "--out", "o"], "unknown input type"),
        (["corpus", "x.txt", "--vocab-size", "0", "--out", "o"], "'0' must be >= 1"),
        (["fineweb", "--train-shards", "-3"], "--train-shards -3 must be >= 0"),
    ]:
        with pytest.raises(SystemExit) if "must be >= 1" in expect else nullcontext():
            assert prepare.main(argv) == 2
        err = capsys.readouterr().err
        assert expect in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------------------------------------------
# corpus
# ----------------------------------------------------------------------------------------------------------------

@needs_shared
def test_corpus_reproduces_the_reference_split(tmp_path):
    out = tmp_path / "shared_sp1024"
    r = run_cli("corpus", SHARED_CORPUS, "--tokenizer", SHARED_TOKENIZER, "--val-docs", "1000", "--out", out,
                "--shard-tokens", "20000000")
    assert r.returncode == 0, r.stderr
    val, train = split_tokens(out, "val"), split_tokens(out, "train")
    assert val.size == 3_068_215 and train.size == 29_327_958
    assert int((val == BOS_ID).sum()) == 1000 and int((train == BOS_ID).sum()) == 8563
    assert read_shard(out / "fineweb_train_000000.bin").size == 20_000_000
    assert "both splits: no train document" in r.stdout and "tokenizing: docs" in r.stdout


def write_jsonl(path: Path, texts: list[str], compress: bool = False) -> Path:
    data = "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if compress else data)
    return path


def expected_stream(sp, texts: list[str]) -> list[int]:
    return [t for text in texts for t in [BOS_ID] + sp.encode(text)]


def test_corpus_reports_and_dedupes_documents_in_both_splits(tmp_path, sample_root, sample_sp, capsys):
    a, b, c, d = "The first document.", "Second one, with 42 numbers.", "A train-only text.", "Another: d."
    src = write_jsonl(tmp_path / "dup.jsonl", [a, b, c, a, d, b, c])
    tok = str(sample_root / "tokenizers" / "sample_1024_bpe.model")
    base = ["corpus", str(src), "--tokenizer", tok, "--val-docs", "2"]
    assert prepare.main(base + ["--out", str(tmp_path / "keep")]) == 0
    out = capsys.readouterr().out
    assert "both splits: 2 train documents appear verbatim in validation (train #3 = val #0, train #5 = val #1)" in out
    assert split_tokens(tmp_path / "keep", "train").tolist() == expected_stream(sample_sp, [c, a, d, b, c])
    assert prepare.main(base + ["--out", str(tmp_path / "dedup"), "--dedupe"]) == 0
    out = capsys.readouterr().out
    assert "dropped 2 from train (--dedupe)" in out and "train: 3 documents" in out
    assert split_tokens(tmp_path / "dedup", "val").tolist() == expected_stream(sample_sp, [a, b])
    assert split_tokens(tmp_path / "dedup", "train").tolist() == expected_stream(sample_sp, [c, d, c])


def test_corpus_reads_txt_and_zst_and_cuts_exact_shards(tmp_path, sample_root, sample_sp, capsys):
    texts = ["Plain text file.\n\nTwo paragraphs, one document.", "Compressed text file \u00e9.", "json one",
             "json two", "plain jsonl three"]
    (tmp_path / "a.txt").write_text(texts[0])
    (tmp_path / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(texts[1].encode()))
    write_jsonl(tmp_path / "c.jsonl.zst", texts[2:4], compress=True)
    write_jsonl(tmp_path / "d.jsonl", texts[4:])
    out = tmp_path / "out"
    out.mkdir()
    write_shard(out / "fineweb_train_000009.bin", np.array([1, 2, 3], np.uint16))  # stale, from an earlier run
    (out / "notes.txt").write_text("kept")
    inputs = [str(tmp_path / n) for n in ("a.txt", "b.txt.zst", "c.jsonl.zst", "d.jsonl")]
    assert prepare.main(["corpus", *inputs, "--tokenizer", str(sample_root / "tokenizers/sample_1024_bpe.model"),
                         "--val-docs", "1", "--shard-tokens", "7", "--out", str(out)]) == 0
    capsys.readouterr()
    stream = expected_stream(sample_sp, texts)
    val_len = 1 + len(sample_sp.encode(texts[0]))
    assert split_tokens(out, "val").tolist() == stream[:val_len]
    train_files = list_shards(str(out), "train")
    assert [read_shard(f).size for f in train_files[:-1]] == [7] * (len(train_files) - 1)
    assert split_tokens(out, "train").tolist() == stream[val_len:]
    assert len(train_files) < 10 and not (out / "fineweb_train_000009.bin").exists()  # stale shard replaced
    assert (out / "notes.txt").read_text() == "kept" and not list(tmp_path.glob(".out.partial"))


def test_corpus_trains_a_new_tokenizer_with_the_spec(tmp_path, sample_docs, capsys):
    texts = [t for _, t in sample_docs[:40]]
    src = write_jsonl(tmp_path / "docs.jsonl", texts)
    tok = tmp_path / "tok" / "new_400.model"
    assert prepare.main(["corpus", str(src), "--vocab-size", "400", "--tokenizer-out", str(tok), "--val-docs", "4",
                         "--out", str(tmp_path / "out")]) == 0
    assert f"tokenizer: wrote {tok}" in capsys.readouterr().out
    sp = prepare.load_sp(tok)
    assert sp.vocab_size() == 400 and sum(sp.is_byte(i) for i in range(400)) == 256 and sp.bos_id() == BOS_ID
    assert split_tokens(tmp_path / "out", "train").tolist() == expected_stream(sp, texts[4:])
    assert int(split_tokens(tmp_path / "out", "val").max()) < 400


def test_corpus_input_errors(tmp_path, sample_root, capsys):
    tok = str(sample_root / "tokenizers" / "sample_1024_bpe.model")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    few = write_jsonl(tmp_path / "few.jsonl", ["one", "two"])
    cases = [
        (["corpus", str(bad), "--tokenizer", tok, "--out", str(tmp_path / "o")], "bad.jsonl:2: no string field 'text'"),
        (["corpus", str(few), "--tokenizer", tok, "--out", str(tmp_path / "o")], "lower --val-docs"),
        (["corpus", str(few), "--out", str(tmp_path / "o")], "exactly one of --tokenizer"),
        (["corpus", str(few), "--tokenizer", str(few), "--out", str(tmp_path / "o")], "not a SentencePiece model"),
    ]
    for argv, expect in cases:
        assert prepare.main(argv) == 2
        err = capsys.readouterr().err
        assert expect in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.bin"))
    assert not list(tmp_path.glob(".o.partial"))  # a failed run cleans its staging folder


# ----------------------------------------------------------------------------------------------------------------
# fineweb downloader against a fake local repository
# ----------------------------------------------------------------------------------------------------------------

class FakeHub:
    """Stands in for hf_hub_download: copies repo/filename to local_dir/filename and records every call."""

    def __init__(self, repo: Path, flaky: dict[str, int] | None = None):
        self.repo, self.calls, self.flaky = repo, [], dict(flaky or {})

    def __call__(self, repo_id: str, filename: str, local_dir: Path, force: bool) -> Path:
        self.calls.append((repo_id, filename, force))
        src, dst = self.repo / filename, Path(local_dir) / filename
        if not src.exists():
            raise FileNotFoundError(f"404 {filename}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        if self.flaky.get(Path(filename).name, 0) > 0:  # an interrupted transfer: half the file
            self.flaky[Path(filename).name] -= 1
            data = data[:len(data) // 2]
        dst.write_bytes(data)
        return dst

    def fetched(self) -> list[str]:
        return [Path(f).name for _, f, _ in self.calls]


@pytest.fixture
def fake_repo(tmp_path, sample_root) -> Path:
    repo = tmp_path / "repo"
    folder = repo / "datasets" / "fineweb10B_sp1024"
    folder.mkdir(parents=True)
    (repo / "datasets" / "tokenizers").mkdir()
    shutil.copy(sample_root / "tokenizers" / "sample_1024_bpe.model",
                repo / "datasets" / "tokenizers" / "fineweb_1024_bpe.model")
    rng = np.random.default_rng(0)
    entry = {"tokenizer": "tokenizers/fineweb_1024_bpe.model", "vocab_size": 1024, "val": [], "train": []}
    for split, count, size in (("val", 1, 3000), ("train", 3, 5000)):
        for i in range(count):
            name = f"fineweb_{split}_{i:06d}.bin"
            write_shard(folder / name, rng.integers(0, 1024, size + i, dtype=np.uint16))
            entry[split].append({"name": name, "num_tokens": size + i})
    manifest = {"version": 1, "datasets": {"fineweb10B_sp1024": entry}}
    (repo / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    return repo


def fineweb(root: Path, *extra: str) -> int:
    return prepare.main(["fineweb", "--variant", "sp1024", "--data-dir", str(root), *extra])


def test_fineweb_downloads_verifies_and_resumes(tmp_path, fake_repo, monkeypatch, capsys):
    hub = FakeHub(fake_repo)
    monkeypatch.setattr(prepare, "hub_download", hub)
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "someone/fork")
    root = tmp_path / "data"
    assert fineweb(root, "--train-shards", "2") == 0
    assert hub.fetched() == ["manifest.json", "fineweb_1024_bpe.model", "fineweb_val_000000.bin",
                             "fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert {repo for repo, _, _ in hub.calls} == {"someone/fork"}
    local = root / "datasets" / "fineweb10B_sp1024"
    remote = fake_repo / "datasets" / "fineweb10B_sp1024"
    for name in ("fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin"):
        assert (local / name).read_bytes() == (remote / name).read_bytes()
    assert not (local / "fineweb_train_000002.bin").exists()
    assert (root / "tokenizers" / "fineweb_1024_bpe.model").is_file()
    out = capsys.readouterr().out
    assert "[4/4] datasets/fineweb10B_sp1024/fineweb_train_000001.bin: downloaded, 5,001 tokens" in out

    # An earlier run died: one shard left at 0 bytes, one truncated; the good ones must not be fetched again.
    (local / "fineweb_train_000001.bin").write_bytes(b"")
    (local / "fineweb_val_000000.bin").write_bytes((remote / "fineweb_val_000000.bin").read_bytes()[:2000])
    hub.calls.clear()
    assert fineweb(root, "--train-shards", "3") == 0
    assert hub.fetched() == ["manifest.json", "fineweb_val_000000.bin", "fineweb_train_000001.bin",
                             "fineweb_train_000002.bin"]
    assert [force for _, f, force in hub.calls if f.endswith("_000001.bin")] == [True]
    for name in ("fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"):
        assert (local / name).read_bytes() == (remote / name).read_bytes()
    out = capsys.readouterr().out
    assert "fineweb_train_000000.bin: present, 5,000 tokens" in out and "existing copy is bad" in out


def test_fineweb_refetches_a_bad_download(tmp_path, fake_repo, monkeypatch, capsys):
    hub = FakeHub(fake_repo, flaky={"fineweb_train_000000.bin": 1})
    monkeypatch.setattr(prepare, "hub_download", hub)
    assert fineweb(tmp_path / "data", "--train-shards", "1") == 0
    assert [force for _, f, force in hub.calls if f.endswith("train_000000.bin")] == [False, True]
    assert "attempt 1/3 failed" in capsys.readouterr().out


def test_fineweb_permanently_bad_shard_fails_with_one_line(tmp_path, fake_repo, monkeypatch, capsys):
    manifest = json.loads((fake_repo / "datasets" / "manifest.json").read_text())
    manifest["datasets"]["fineweb10B_sp1024"]["train"][1]["num_tokens"] = 4999  # the repo's file disagrees
    (fake_repo / "datasets" / "manifest.json").write_text(json.dumps(manifest))
    hub = FakeHub(fake_repo)
    monkeypatch.setattr(prepare, "hub_download", hub)
    root = tmp_path / "data"
    assert fineweb(root, "--train-shards", "3") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fineweb_train_000001.bin" in err and "still bad after 3 downloads" in err
    assert hub.fetched().count("fineweb_train_000001.bin") == prepare.FETCH_ATTEMPTS
    assert not (root / "datasets" / "fineweb10B_sp1024" / "fineweb_train_000001.bin").exists()


def test_fineweb_manifest_errors_and_list_layout(tmp_path, fake_repo, monkeypatch, capsys):
    monkeypatch.setattr(prepare, "hub_download", FakeHub(fake_repo))
    assert fineweb(tmp_path / "d", "--train-shards", "9") == 2
    assert "manifest lists only 3 train shards" in capsys.readouterr().err
    assert prepare.main(["fineweb", "--variant", "sp4096", "--data-dir", str(tmp_path / "d")]) == 2
    assert "available: sp1024" in capsys.readouterr().err
    # The list layout with a separate tokenizer table and shard counts is accepted too.
    listed = {"datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
                            "stats": {"files_train": 3, "files_val": 1}}],
              "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model"}]}
    (fake_repo / "datasets" / "manifest.json").write_text(json.dumps(listed))
    assert fineweb(tmp_path / "d2", "--train-shards", "1") == 0
    assert (tmp_path / "d2" / "datasets" / "fineweb10B_sp1024" / "fineweb_train_000000.bin").is_file()


def test_fineweb_without_huggingface_hub_says_how_to_install(tmp_path, capsys):
    try:
        import huggingface_hub  # noqa: F401
        pytest.skip("huggingface_hub is installed; the real download would need the network")
    except ImportError:
        pass
    assert fineweb(tmp_path / "d", "--train-shards", "1") == 2
    assert "pip install huggingface_hub" in capsys.readouterr().err
