"""Tests for data/prepare.py and the shard format / byte accounting it shares with train_gpt.py (CPU, offline).

The shared-corpus tests use ../shared/data (the challenge tokenizer and a 9,563-document corpus) and skip without it.
"""

from __future__ import annotations

import hashlib
import os
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


def reference_overlap(val: np.ndarray, train: np.ndarray) -> int:
    """Validation documents (BOS to next BOS) equal to some train document, by brute force on tuples."""
    def docs(a: np.ndarray) -> list[tuple]:
        at = np.flatnonzero(a == BOS_ID).tolist() + [a.size]
        return [tuple(a[s:e].tolist()) for s, e in zip(at[:-1], at[1:])]
    in_train = set(docs(train))
    return sum(d in in_train for d in docs(val))


def check_provenance(folder: Path, kind: str, source, variant, tokenizer: Path) -> dict:
    """provenance.json lists exactly the folder's shards with their sizes and SHA-256 (computed here), the
    tokenizer's, and the brute-force overlap count; returns the record."""
    record = json.loads((folder / "provenance.json").read_text())
    shards = sorted(folder.glob("fineweb_*.bin"))
    assert list(record) == ["format", "kind", "source", "variant", "files", "tokenizer", "val_docs_in_train"]
    assert (record["format"], record["kind"], record["source"], record["variant"]) == (1, kind, source, variant)
    assert record["files"] == {p.name: {"bytes": len(p.read_bytes()),
                                        "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in shards}
    tok = tokenizer.resolve()
    path = tok.relative_to(REPO).as_posix() if tok.is_relative_to(REPO) else str(tok)
    assert record["tokenizer"] == {"path": path, "sha256": hashlib.sha256(tok.read_bytes()).hexdigest()}
    val = split_tokens(folder, "val")
    train = split_tokens(folder, "train") if list(folder.glob("fineweb_train_*.bin")) else val[:0]
    assert record["val_docs_in_train"] == reference_overlap(val, train)
    assert not list(folder.glob(".provenance*"))  # the temporary file was renamed
    return record


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
    tmp_files, record = file_digests(tmp_path), "datasets/sample_sp1024/provenance.json"
    assert repo_files.pop(record) and tmp_files.pop(record)  # its tokenizer path differs (checked below)
    assert repo_files == tmp_files  # byte-identical across two runs
    # provenance.json: every shard, the tokenizer, no validation document in train (repo path relative, else absolute)
    repo_record = check_provenance(sample_root / "datasets/sample_sp1024", "sample", "embedded", None,
                                   sample_root / "tokenizers/sample_1024_bpe.model")
    assert repo_record["tokenizer"]["path"] == "data/tokenizers/sample_1024_bpe.model"
    tmp_record = check_provenance(tmp_path / "datasets/sample_sp1024", "sample", "embedded", None,
                                  tmp_path / "tokenizers/sample_1024_bpe.model")
    assert tmp_record["val_docs_in_train"] == 0 and tmp_record["files"] == repo_record["files"]
    assert "provenance: wrote" in r.stdout and "val_docs_in_train 0" in r.stdout
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
# provenance: validation documents in train, counted on token sequences
# ----------------------------------------------------------------------------------------------------------------

def write_split(folder: Path, split: str, stream: np.ndarray, cuts: list[int]) -> list[Path]:
    files = []
    for i, part in enumerate(np.split(stream.astype(np.uint16), sorted(cuts))):
        files.append(folder / f"fineweb_{split}_{i:06d}.bin")
        write_shard(files[-1], part)
    return files


def test_overlap_count_is_exact_across_shard_and_chunk_boundaries(tmp_path):
    rng = np.random.default_rng(0)
    progress = prepare.Progress(1e9)
    for trial in range(60):  # ids 0-3: many short documents, many duplicates, empty shards, junk before the first BOS
        folder = tmp_path / str(trial)
        folder.mkdir()
        val, train = rng.integers(0, 4, rng.integers(0, 80)), rng.integers(0, 4, rng.integers(0, 300))
        val_files = write_split(folder, "val", val, list(rng.integers(0, val.size + 1, 2)))
        train_files = write_split(folder, "train", train, list(rng.integers(0, train.size + 1, 3)))
        chunk = int(rng.integers(1, 12))
        got = prepare.count_val_docs_in_train(val_files, train_files, progress, chunk_tokens=chunk)
        assert got == reference_overlap(val, train), (trial, chunk)
    # Planted: a long document crossing a train shard boundary, and equal-length near-misses (one token differs).
    doc = np.concatenate([[BOS_ID], rng.integers(2, 1024, 5000)])
    near = doc.copy()
    near[2500] ^= 1
    val = np.concatenate([doc, [BOS_ID, 7, 8], doc])
    train = np.concatenate([[5, 6], near, doc, [BOS_ID, 7], near])
    folder = tmp_path / "planted"
    folder.mkdir()
    val_files = write_split(folder, "val", val, [])
    train_files = write_split(folder, "train", train, [2 + near.size + 1000])
    for chunk in (64, 1 << 22):
        assert prepare.count_val_docs_in_train(val_files, train_files, progress, chunk_tokens=chunk) == 2
        assert prepare.count_val_docs_in_train(val_files, train_files[:1], progress, chunk_tokens=chunk) == 0


def test_write_provenance_reports_progress_and_rewrites_atomically(tmp_path, sample_root, capsys):
    tok = sample_root / "tokenizers/sample_1024_bpe.model"
    folder = tmp_path / "d"
    folder.mkdir()
    write_split(folder, "val", np.array([BOS_ID, 5, BOS_ID, 6]), [])
    write_split(folder, "train", np.array([BOS_ID, 6, BOS_ID, 5, 5]), [3])
    (folder / "provenance.json").write_text("old")
    shards = sorted(folder.glob("fineweb_*.bin"))
    record = prepare.write_provenance(folder, "corpus", ["x.jsonl"], None, shards, tok, progress_s=0)
    assert record == check_provenance(folder, "corpus", ["x.jsonl"], None, tok)
    assert record["val_docs_in_train"] == 1  # [BOS, 6] is in train; [BOS, 5] is not ([BOS, 5, 5] is)
    out = capsys.readouterr().out
    assert "provenance: sha256: 1 of 3 shards" in out and "provenance: overlap: " in out


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
    assert check_provenance(tmp_path / "keep", "corpus", [str(src)], None, Path(tok))["val_docs_in_train"] == 2
    assert "warning: 2 validation documents also occur in the training shards" in out
    assert prepare.main(base + ["--out", str(tmp_path / "dedup"), "--dedupe"]) == 0
    out = capsys.readouterr().out
    assert "dropped 2 from train (--dedupe)" in out and "train: 3 documents" in out
    assert split_tokens(tmp_path / "dedup", "val").tolist() == expected_stream(sample_sp, [a, b])
    assert split_tokens(tmp_path / "dedup", "train").tolist() == expected_stream(sample_sp, [c, d, c])
    assert check_provenance(tmp_path / "dedup", "corpus", [str(src)], None, Path(tok))["val_docs_in_train"] == 0
    # Three copies of a in validation, two in train: each validation copy counts; the record is rewritten.
    write_jsonl(src, [a, a, b, a, c, a, b, d])
    assert prepare.main(base[:-1] + ["3", "--out", str(tmp_path / "keep")]) == 0
    assert check_provenance(tmp_path / "keep", "corpus", [str(src)], None, Path(tok))["val_docs_in_train"] == 3
    assert "val_docs_in_train 3" in capsys.readouterr().out


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
    record = check_provenance(out, "corpus", inputs, None, sample_root / "tokenizers/sample_1024_bpe.model")
    assert len(record["files"]) == len(train_files) + len(list_shards(str(out), "val"))
    assert record["val_docs_in_train"] == 0


def test_corpus_trains_a_new_tokenizer_with_the_spec(tmp_path, sample_docs, capsys):
    texts = [t for _, t in sample_docs[:40]]
    src = write_jsonl(tmp_path / "docs.jsonl", texts)
    tok = tmp_path / "tok" / "new_400.model"
    assert prepare.main(["corpus", str(src), "--vocab-size", "400", "--tokenizer-out", str(tok), "--val-docs", "4",
                         "--out", str(tmp_path / "out")]) == 0
    assert f"tokenizer: wrote {tok}" in capsys.readouterr().out
    sp = prepare.load_sp(tok)
    check_provenance(tmp_path / "out", "corpus", [str(src)], None, tok)
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


def set_remote_shard(repo: Path, name: str, tokens: list[int]) -> None:
    """Replace one shard of the fake repository (and its manifest token count)."""
    write_shard(repo / "datasets" / "fineweb10B_sp1024" / name, np.array(tokens, np.uint16))
    manifest_path = repo / "datasets" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["datasets"]["fineweb10B_sp1024"]
    next(e for e in entry["train"] + entry["val"] if e["name"] == name)["num_tokens"] = len(tokens)
    manifest_path.write_text(json.dumps(manifest))


def test_fineweb_writes_provenance_with_the_overlap(tmp_path, fake_repo, monkeypatch, capsys):
    hub = FakeHub(fake_repo)
    monkeypatch.setattr(prepare, "hub_download", hub)
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "someone/fork")
    root = tmp_path / "data"
    local, tok = root / "datasets" / "fineweb10B_sp1024", root / "tokenizers" / "fineweb_1024_bpe.model"
    source = "someone/fork:datasets/fineweb10B_sp1024"
    assert fineweb(root, "--train-shards", "2") == 0
    record = check_provenance(local, "fineweb", source, "sp1024", tok)
    assert sorted(record["files"]) == ["fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    assert record["files"]["fineweb_train_000001.bin"]["bytes"] == 1024 + 2 * 5001
    assert record["tokenizer"]["path"] == str(tok.resolve())  # outside the repository: absolute

    # Plant duplicates: val documents A, B, A-prefix, B; train holds B and A, A crossing the boundary between two
    # shards. Val A (once) and B (twice) are in train, the A-prefix is not: 3. The remote files changed, so the
    # manifest counts no longer match the local copies, which are fetched again; the record is rewritten.
    a, b = [BOS_ID, 50, 60, 70, 80], [BOS_ID, 9, 9]
    set_remote_shard(fake_repo, "fineweb_val_000000.bin", a + b + a[:3] + b)
    set_remote_shard(fake_repo, "fineweb_train_000000.bin", [BOS_ID, 4, 4] + b + a[:2])
    set_remote_shard(fake_repo, "fineweb_train_000001.bin", a[2:] + [BOS_ID, 5])
    capsys.readouterr()
    assert fineweb(root, "--train-shards", "2") == 0
    assert check_provenance(local, "fineweb", source, "sp1024", tok)["val_docs_in_train"] == 3
    assert "warning: 3 validation documents also occur in the training shards" in capsys.readouterr().out

    # A later run asking for fewer shards checks and records the train shards an earlier run left (training reads
    # them); a shard the manifest does not list is left out of the record, with a warning.
    write_shard(local / "fineweb_train_000007.bin", np.array([BOS_ID, 2], np.uint16))
    hub.calls.clear()
    assert fineweb(root, "--train-shards", "0") == 0
    assert hub.fetched() == ["manifest.json"]
    out = capsys.readouterr().out
    assert "2 more train shards from an earlier run are present" in out
    assert "1 shard(s) in" in out and "(fineweb_train_000007.bin, ...)" in out
    (local / "fineweb_train_000007.bin").unlink()
    record = check_provenance(local, "fineweb", source, "sp1024", tok)
    assert len(record["files"]) == 3 and record["val_docs_in_train"] == 3


# ----------------------------------------------------------------------------------------------------------------
# fineweb without network: what huggingface_hub raises when the hub cannot be reached
# ----------------------------------------------------------------------------------------------------------------

def hub_error(kind: str) -> Exception:
    """The exception chain huggingface_hub raises without network (class names as in the real libraries)."""
    connect = type("ConnectError", (Exception,), {"__module__": "httpx"})  # httpx (huggingface_hub >= 1.0)
    requests_error = type("ConnectionError", (OSError,), {"__module__": "requests.exceptions"})  # requests (< 1.0)
    local_entry = type("LocalEntryNotFoundError", (FileNotFoundError,), {"__module__": "huggingface_hub.errors"})
    try:
        try:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except OSError as e:
                raise (connect if kind.startswith("httpx") else requests_error)("[Errno 111] Connection refused") from e
        except Exception as e:
            if kind.endswith("force"):  # force_download=True
                raise ValueError("Force download failed due to the above error.") from e
            raise local_entry("An error happened while trying to locate the file on the Hub and we cannot find "
                              "the requested files in the local cache.") from e
    except Exception as e:
        return e


@pytest.mark.parametrize("kind", ["httpx-force", "requests-force", "httpx-cache"])
def test_fineweb_unreachable_hub_is_one_line_exit_2(tmp_path, kind, monkeypatch, capsys):
    def offline(repo_id, filename, local_dir, force):
        raise hub_error(kind)
    monkeypatch.setattr(prepare, "hub_download", offline)
    assert fineweb(tmp_path / "d", "--train-shards", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: cannot reach the Hugging Face hub"), err
    assert "willdepueoai/parameter-golf" in err and "HF_ENDPOINT" in err and "prepare.py sample" in err
    assert "Connection refused" in err and "Force download failed" not in err


def test_fineweb_hub_lost_during_shards_is_one_line(tmp_path, fake_repo, monkeypatch, capsys):
    hub = FakeHub(fake_repo)
    def flaky(repo_id, filename, local_dir, force):
        if filename.endswith("train_000001.bin"):
            raise hub_error("httpx-force")
        return hub(repo_id, filename, local_dir, force)
    monkeypatch.setattr(prepare, "hub_download", flaky)
    root = tmp_path / "data"
    assert fineweb(root, "--train-shards", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot reach the Hugging Face hub" in err
    assert "while fetching datasets/fineweb10B_sp1024/fineweb_train_000001.bin" in err and "run again" in err
    assert (root / "datasets/fineweb10B_sp1024/fineweb_train_000000.bin").is_file()  # kept for the next run
    assert not (root / "datasets/fineweb10B_sp1024/provenance.json").exists()


def test_network_cause_ignores_errors_from_a_reached_hub():
    assert prepare.network_cause(hub_error("requests-cache")) is not None
    not_found = type("EntryNotFoundError", (FileNotFoundError,), {})("404 datasets/x.bin")
    assert prepare.network_cause(ValueError("wrapped")) is None
    assert prepare.network_cause(not_found) is None and prepare.network_cause(OSError(28, "No space left")) is None


def test_fineweb_unreachable_endpoint_with_real_huggingface_hub(tmp_path):
    pytest.importorskip("huggingface_hub")
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "NO_PROXY": "*"}
    # The real client retries with back-off (time.sleep); without the sleeping this takes a second, not 20.
    code = ("import runpy, sys, time; time.sleep = lambda s: None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, str(REPO / "data" / "prepare.py"), "fineweb", "--data-dir",
                        str(tmp_path / "d"), "--train-shards", "1"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "cannot reach the Hugging Face hub at http://127.0.0.1:9" in err, err
    assert "willdepueoai/parameter-golf" in err
