"""Build the token shards train_gpt.py reads: an offline sample, any local corpus, or the challenge's cached FineWeb.

    python3 data/prepare.py sample                      # offline: stdlib text -> data/datasets/sample_sp1024
    python3 data/prepare.py corpus docs.jsonl.zst --tokenizer tok.model --val-docs 1000 --out data/datasets/mine
    python3 data/prepare.py fineweb --variant sp1024 --train-shards 10   # needs internet and huggingface_hub

Shards use the challenge's format and are written and checked by train_gpt.py's write_shard/read_shard (one reader
for the whole project). Every document is [BOS] + sp.encode(text); the validation split is the first N documents.
Every command ends by writing <out folder>/provenance.json (what the shards are, each shard's size and SHA-256, the
tokenizer's SHA-256 and how many validation documents also occur in train), which train_gpt.py verifies.
User errors print one line and exit with code 2. See data/README.md for options, the manifest layout and counts.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import re
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from train_gpt import BOS_ID, UserError, read_shard, write_shard  # noqa: E402  (needs the path above)

DATA_DIR = REPO_ROOT / "data"
SHARD_TOKENS = 100_000_000  # the challenge's train shard size
# The challenge tokenizer's training spec (README of the challenge; ids pad=0 bos=1 eos=2 unk=3).
SPM_SPEC = dict(model_type="bpe", pad_id=0, bos_id=1, eos_id=2, unk_id=3, byte_fallback=True, split_digits=True,
                normalization_rule_name="nmt_nfkc", add_dummy_prefix=False, character_coverage=0.999,
                num_threads=1,  # the BPE trainer's output depends on its thread count; 1 is reproducible anywhere
                input_sentence_size=0)  # 0 = use every sentence: sentencepiece's own sampling is randomly seeded
ENCODE_BATCH_CHARS = 8_000_000  # text per encode call: big enough to keep every thread busy, small in memory


class ArgParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit 2) instead of usage + error."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# TOKENIZER
# ----------------------------------------------------------------------------------------------------------------

def train_tokenizer(lines: Iterable[str], vocab_size: int, out_path: Path):
    """Train a SentencePiece BPE model with the challenge's spec on `lines` (one sentence each), save and return it."""
    import sentencepiece as spm
    model = io.BytesIO()
    try:  # minloglevel=2 silences the trainer's log without touching file descriptors (pytest, notebooks)
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                       minloglevel=2, **SPM_SPEC)
    except RuntimeError as e:  # e.g. a vocabulary larger than the text allows
        raise UserError(f"tokenizer training failed (vocab size {vocab_size}): {str(e).splitlines()[0]}") from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def load_sp(path: Path):
    import sentencepiece as spm
    if not path.is_file():
        raise UserError(f"tokenizer {path} does not exist")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise UserError(f"tokenizer {path} is not a SentencePiece model: {str(e).splitlines()[0]}") from None


def training_lines(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Non-empty lines of the texts, in order, until max_chars characters have been yielded."""
    total = 0
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line
                total += len(line)
                if total >= max_chars:
                    return


# ----------------------------------------------------------------------------------------------------------------
# SHARD WRITING
# Documents stream through a batched, multi-threaded encoder into two shard writers. Files go to a staging folder
# first and replace the old shards only when everything succeeded, so an interrupted run never leaves a mix.
# ----------------------------------------------------------------------------------------------------------------

class ShardWriter:
    """Cuts one split's token stream into fineweb_<split>_NNNNNN.bin files of exactly shard_tokens (last: the rest)."""

    def __init__(self, folder: Path, split: str, shard_tokens: int):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.parts: list[np.ndarray] = []
        self.buffered = self.tokens = self.docs = 0
        self.files: list[tuple[str, int]] = []

    def add(self, doc: np.ndarray) -> None:
        self.parts.append(doc)
        self.buffered += doc.size
        self.tokens += doc.size
        self.docs += 1
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)

    def _flush(self, n: int) -> None:
        stream = np.concatenate(self.parts)
        name = f"fineweb_{self.split}_{len(self.files):06d}.bin"
        write_shard(self.folder / name, stream[:n])
        self.files.append((name, n))
        rest = stream[n:]
        self.parts, self.buffered = ([rest] if rest.size else []), rest.size


@dataclass
class SplitReport:
    val: ShardWriter
    train: ShardWriter
    both_splits: list[tuple[int, int]] = field(default_factory=list)  # (train doc index, equal val doc index)
    dropped: int = 0


def encoded_batches(texts: Iterable[str], sp, threads: int) -> Iterator[tuple[list[str], list[list[int]]]]:
    """(texts, token ids) in batches of about ENCODE_BATCH_CHARS characters, encoded on `threads` threads."""
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= ENCODE_BATCH_CHARS:
            yield batch, sp.encode(batch, num_threads=threads)
            batch, chars = [], 0
    if batch:
        yield batch, sp.encode(batch, num_threads=threads)


def write_splits(texts: Iterable[str], sp, out_dir: Path, val_docs: int, shard_tokens: int, dedupe: bool,
                 threads: int, progress_s: float = 5.0) -> SplitReport:
    """Tokenize documents ([BOS] + ids), first val_docs to val, the rest to train, then swap the shards into out_dir.

    A train document whose exact token sequence is also a validation document's (the same text, up to the tokenizer's
    normalization) is reported, and dropped when dedupe is set.
    """
    if sp.vocab_size() > 2**16:
        raise UserError(f"tokenizer has {sp.vocab_size()} pieces; uint16 shards hold at most 65536")
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        report = tokenize_into(texts, sp, staging, val_docs, shard_tokens, dedupe, threads, progress_s)
        swap_in(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left over when something failed
    return report


def tokenize_into(texts: Iterable[str], sp, staging: Path, val_docs: int, shard_tokens: int, dedupe: bool,
                  threads: int, progress_s: float) -> SplitReport:
    report = SplitReport(ShardWriter(staging, "val", shard_tokens), ShardWriter(staging, "train", shard_tokens))
    val_hashes: dict[bytes, int] = {}
    index, start, last = 0, time.time(), time.time()
    for _, ids in encoded_batches(texts, sp, threads):
        for doc_ids in ids:
            doc = np.array([BOS_ID] + doc_ids, dtype=np.uint16)
            digest = hashlib.sha1(doc.tobytes()).digest()  # tokens, not text: what training and provenance see
            if index < val_docs:
                val_hashes.setdefault(digest, index)
                report.val.add(doc)
            elif digest in val_hashes:
                report.both_splits.append((index, val_hashes[digest]))
                if dedupe:
                    report.dropped += 1
                else:
                    report.train.add(doc)
            else:
                report.train.add(doc)
            index += 1
        if time.time() - last >= progress_s:
            last = time.time()
            rate = index / max(last - start, 1e-9)
            log(f"tokenizing: docs {index:,} tokens {report.val.tokens + report.train.tokens:,} docs/s {rate:,.0f}")
    report.val.close()
    report.train.close()
    if not report.val.docs:
        raise UserError("no documents in the input")
    if not report.train.docs:
        raise UserError(f"all {index:,} documents went to validation (--val-docs {val_docs:,}); "
                        "lower --val-docs so the train split is not empty")
    return report


def swap_in(staging: Path, out_dir: Path) -> None:
    """Replace out_dir's fineweb_*.bin shards by the staged ones (other files in out_dir are left alone)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("fineweb_*_[0-9][0-9][0-9][0-9][0-9][0-9].bin"):
        old.unlink()
    for new in sorted(staging.iterdir()):
        os.replace(new, out_dir / new.name)


def report_shards(report: SplitReport, out_dir: Path) -> list[Path]:
    return [out_dir / name for w in (report.val, report.train) for name, _ in w.files]


def print_report(report: SplitReport, out_dir: Path, dedupe: bool) -> None:
    for w in (report.val, report.train):
        log(f"{w.split}: {w.docs:,} documents, {w.tokens:,} tokens in {len(w.files)} file(s)")
        for name, n in w.files:
            log(f"  wrote {out_dir / name} ({n:,} tokens)")
    pairs = report.both_splits
    if pairs:
        examples = ", ".join(f"train #{t} = val #{v}" for t, v in pairs[:5])
        action = f"dropped {report.dropped:,} from train (--dedupe)" if dedupe else "kept; --dedupe drops them"
        log(f"both splits: {len(pairs):,} train documents appear verbatim in validation ({examples}); {action}")
    else:
        log("both splits: no train document appears verbatim in validation")


# ----------------------------------------------------------------------------------------------------------------
# PROVENANCE: <out folder>/provenance.json, written last by every command (contract section 3). train_gpt.py checks
# the shards a run reads against it and reports `data` and `val_overlap` in its compliance block.
# Overlap between the splits is counted on token sequences: a document is a BOS token and what follows up to the
# next BOS (or the end of the split), possibly across shard files. Each document gets a 64-bit key (a polynomial
# hash of its tokens modulo 2**64, mixed with its length), computed for millions of tokens per numpy call; a train
# document whose key equals a validation document's is then compared token by token, so the count is exact.
# ----------------------------------------------------------------------------------------------------------------

PROVENANCE = "provenance.json"
HASH_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
LENGTH_MIX = np.uint64(0xD6E8FEB86659FD93)
OVERLAP_CHUNK_TOKENS = 1 << 22  # tokens hashed per step (~100 MB of temporaries)
PROGRESS_S = 10.0
_powers: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]  # HASH_BASE**i, HASH_BASE**-i


def hash_powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """HASH_BASE**i and HASH_BASE**-i modulo 2**64 for i < n (at least; cached and grown by doubling)."""
    if _powers[0].size < n:
        size = max(n, 2 * _powers[0].size)
        for k, base in enumerate((HASH_BASE, pow(HASH_BASE, -1, 2**64))):
            p = np.full(size, base, np.uint64)
            p[0] = 1
            _powers[k] = np.cumprod(p, dtype=np.uint64)  # wraps modulo 2**64
    return _powers[0], _powers[1]


def document_keys(block: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """64-bit keys of the contiguous documents block[starts[i]:starts[i] + lengths[i]] (starts ascending)."""
    first, end = int(starts[0]), int(starts[-1] + lengths[-1])
    pw, inv = hash_powers(end - first)
    x = block[first:end].astype(np.uint64)
    np.multiply(x, pw[:x.size], out=x)
    np.cumsum(x, out=x)  # x[j] = sum of token_i * B**i for i <= j (positions relative to `first`)
    s = starts - first
    before = x[np.maximum(s - 1, 0)]
    before[s == 0] = 0
    h = (x[s + lengths - 1] - before) * inv[s]  # = sum of token * B**(position in its document)
    return h ^ (lengths.astype(np.uint64) * LENGTH_MIX)


def split_documents(shards: Iterable[np.ndarray], chunk_tokens: int):
    """Yield (block, offset, starts, lengths, keys) for the documents of one split, its shards given in order.

    block is the split's token stream from position offset; document i is block[starts[i]:starts[i] + lengths[i]],
    whole (one crossing a chunk or shard boundary is carried into the next block). Tokens before the split's
    first BOS belong to no document.
    """
    carry, pos = np.empty(0, np.uint16), 0  # pos: stream position of the next unread token
    for shard in shards:
        for lo in range(0, shard.size, chunk_tokens):
            piece = np.asarray(shard[lo:lo + chunk_tokens])
            block = np.concatenate([carry, piece]) if carry.size else piece
            offset, pos = pos - carry.size, pos + piece.size
            starts = np.flatnonzero(block == BOS_ID)
            if not starts.size:  # no document open (carry empty), none starting: leading tokens of the split
                continue
            carry = block[starts[-1]:]
            if starts.size > 1:
                lengths = np.diff(starts)
                starts = starts[:-1]
                yield block, offset, starts, lengths, document_keys(block, starts, lengths)
    if carry.size:
        starts, lengths = np.zeros(1, np.int64), np.full(1, carry.size, np.int64)
        yield carry, pos - carry.size, starts, lengths, document_keys(carry, starts, lengths)


class Progress:
    """Prints a line at most every `every` seconds."""

    def __init__(self, every: float):
        self.every, self.t0 = every, time.time()
        self.last = self.t0

    def __call__(self, message) -> None:
        if time.time() - self.last >= self.every:
            self.last = time.time()
            log(f"provenance: {message()} ({self.last - self.t0:.0f}s)")


def count_val_docs_in_train(val_files: list[Path], train_files: list[Path], progress: Progress,
                            chunk_tokens: int | None = None) -> int:
    """Validation documents whose exact token sequence also occurs as a training document (hash, then compare)."""
    chunk = chunk_tokens or OVERLAP_CHUNK_TOKENS
    val = np.concatenate([read_shard(f) for f in val_files]) if val_files else np.empty(0, np.uint16)
    found = [(offset + starts, lengths, keys) for _, offset, starts, lengths, keys in split_documents([val], chunk)]
    if not found:
        return 0
    v_start, v_len, v_key = (np.concatenate(parts) for parts in zip(*found))
    order = np.argsort(v_key, kind="stable")
    sorted_keys = v_key[order]
    matched = np.zeros(v_key.size, bool)
    settled: set[int] = set()  # keys whose validation documents are all matched: hits need no comparison
    train = [read_shard(f, mmap=True) for f in train_files]
    total, candidates = sum(t.size for t in train), 0
    for block, offset, starts, lengths, keys in split_documents(train, chunk):
        at = np.searchsorted(sorted_keys, keys)
        hits = np.flatnonzero(sorted_keys[np.minimum(at, sorted_keys.size - 1)] == keys)
        candidates += hits.size
        _, first = np.unique(keys[hits], return_index=True)  # one train document per key first, then the others
        for group in (hits[first], np.delete(hits, first)):  # (the others matter only after a hash collision)
            group = group[~np.isin(keys[group], np.fromiter(settled, np.uint64, len(settled)))]
            for i in group:
                lo, hi, key = int(at[i]), int(np.searchsorted(sorted_keys, keys[i], side="right")), int(keys[i])
                if key in settled:
                    continue
                doc = block[starts[i]:starts[i] + lengths[i]]
                for v in order[lo:hi]:  # every validation document with this key
                    if not matched[v] and v_len[v] == doc.size and np.array_equal(val[v_start[v]:][:doc.size], doc):
                        matched[v] = True
                if matched[order[lo:hi]].all():
                    settled.add(key)
        done = offset + block.size
        progress(lambda: f"overlap: {done:,} of {total:,} train tokens ({100 * done / max(total, 1):.0f}%), "
                         f"{candidates:,} hash matches, {int(matched.sum()):,} of {v_key.size:,} val documents "
                         "in train")
    return int(matched.sum())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def display_path(path: Path) -> str:
    """path relative to the repository root when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def write_provenance(out_dir: Path, kind: str, source, variant: str | None, shards: list[Path], tokenizer: Path,
                     progress_s: float = PROGRESS_S) -> dict:
    """Hash every shard and the tokenizer, count validation documents in train, write out_dir/provenance.json."""
    t0, progress = time.time(), Progress(progress_s)
    shards = sorted(shards, key=lambda p: p.name)
    total = sum(p.stat().st_size for p in shards)
    files, done = {}, 0
    for p in shards:
        files[p.name] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        done += files[p.name]["bytes"]
        progress(lambda: f"sha256: {len(files)} of {len(shards)} shards ({done / 1e9:.1f} of {total / 1e9:.1f} GB)")
    split = lambda name: [p for p in shards if p.name.startswith(f"fineweb_{name}_")]
    overlap = count_val_docs_in_train(split("val"), split("train"), progress)
    record = {"format": 1, "kind": kind, "source": source, "variant": variant, "files": files,
              "tokenizer": {"path": display_path(tokenizer), "sha256": file_sha256(tokenizer)},
              "val_docs_in_train": overlap}
    tmp = out_dir / f".{PROVENANCE}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / PROVENANCE)
    log(f"provenance: wrote {out_dir / PROVENANCE} ({len(files)} shards, {total:,} bytes; val_docs_in_train "
        f"{overlap:,}) in {time.time() - t0:.1f}s")
    if overlap:
        log(f"warning: {overlap:,} validation documents also occur in the training shards; train_gpt.py's "
            "val_overlap check fails on this data")
    return record


# ----------------------------------------------------------------------------------------------------------------
# SAMPLE: an offline corpus from text every CPython install carries
# pydoc_data's topic pages (the language reference behind help()) plus, per standard-library source file, its
# docstrings and full-line comments in source order. Files are read and parsed with ast, never imported, so nothing
# runs; the module list is sys.stdlib_module_names (fixed per Python version) minus parts that distributions often
# split off or that are not prose. Documents are ordered by a hash of their name: a fixed shuffle.
# ----------------------------------------------------------------------------------------------------------------

SAMPLE_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "distutils", "ensurepip", "venv",
               "pydoc_data", "this", "antigravity"}  # split off by distributions, or not prose (this.py is rot13)
SAMPLE_SHARD_TOKENS = 400_000  # several train shards, so the smoke run also crosses shard boundaries
COMMENT_LINE = re.compile(r"[ \t]*#+[ \t]?(.*)")


def stdlib_source_files() -> list[tuple[str, Path]]:
    """(name relative to the stdlib folder, path) of the sample's source files, sorted."""
    root = Path(sysconfig.get_path("stdlib"))
    found = []
    for name in sorted(sys.stdlib_module_names - SAMPLE_SKIP):
        if (root / f"{name}.py").is_file():
            found.append(root / f"{name}.py")
        elif (root / name).is_dir():
            found += sorted(p for p in (root / name).rglob("*.py")
                            if not {"test", "tests"} & set(p.relative_to(root).parts))
    return [(p.relative_to(root).as_posix(), p) for p in found]


def source_prose(source: str) -> str:
    """Docstrings and full-line comment paragraphs of one Python source, in line order."""
    items = []
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = None
    nodes = [tree] if tree else []
    while nodes:
        node = nodes.pop()
        doc = (ast.get_docstring(node) or "").strip()
        if doc:
            items.append((getattr(node, "lineno", 0), doc))
        nodes += [c for c in node.body if isinstance(c, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    para: list[str] = []  # consecutive comment lines with words become one paragraph
    for lineno, line in enumerate(source.split("\n") + [""], 1):
        m = COMMENT_LINE.match(line)
        body = m.group(1).strip() if m else ""
        if m and re.search(r"[A-Za-z]{2}", body) and not body.startswith(("!", "-*-")):
            para.append(body)
        elif para:
            items.append((lineno - len(para), " ".join(para)))
            para = []
    return "\n\n".join(text for _, text in sorted(items, key=lambda x: x[0]))


def sample_documents() -> list[tuple[str, str]]:
    """(name, text) of every sample document in the split order (a fixed shuffle by the hash of the name)."""
    from pydoc_data.topics import topics
    docs = [(f"pydoc topic {k}", topics[k]) for k in sorted(topics)]
    for name, path in stdlib_source_files():
        text = source_prose(path.read_bytes().decode("utf-8", "replace"))
        if text:
            docs.append((f"stdlib {name}", text))
    return sorted(docs, key=lambda d: hashlib.sha256(d[0].encode()).digest())


def cmd_sample(args) -> None:
    t0 = time.time()
    docs = sample_documents()
    if len(docs) < 100:
        log(f"note: only {len(docs)} documents (standard-library sources not found); the sample will be small")
    texts = [text for _, text in docs]
    fingerprint = hashlib.sha256("\0".join(texts).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    log(f"sample: {len(texts):,} documents, {sum(map(len, texts)):,} characters from Python "
        f"{sys.version.split()[0]} (pydoc topics + stdlib docstrings/comments; text sha256 {fingerprint})")
    val_docs = max(1, len(texts) // 10)
    root = Path(args.data_dir)
    tok_path = root / "tokenizers" / "sample_1024_bpe.model"
    sp = train_tokenizer(training_lines(texts[val_docs:], 10**12), 1024, tok_path)  # train split only
    log(f"tokenizer: wrote {tok_path} (vocab 1024, trained on the train documents)")
    out_dir = root / "datasets" / "sample_sp1024"
    report = write_splits(texts, sp, out_dir, val_docs, SAMPLE_SHARD_TOKENS, dedupe=False, threads=args.threads)
    print_report(report, out_dir, dedupe=False)
    write_provenance(out_dir, "sample", "embedded", None, report_shards(report, out_dir), tok_path)
    log(f"done in {time.time() - t0:.1f}s; try: PRESET=smoke python3 train_gpt.py")


# ----------------------------------------------------------------------------------------------------------------
# CORPUS: JSONL (a text field per line) or .txt (one document per file), each optionally .zst-compressed
# ----------------------------------------------------------------------------------------------------------------

def open_text(path: Path):
    """A text stream over path, transparently decompressing .zst."""
    raw = open(path, "rb")
    if path.suffix == ".zst":
        import zstandard
        raw = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def read_documents(paths: list[Path], text_field: str) -> Iterator[str]:
    """Documents of the inputs, in order: one per JSONL line (its text_field), one per .txt file."""
    for path in paths:
        kind = path.name.removesuffix(".zst").rsplit(".", 1)[-1]
        try:
            with open_text(path) as f:
                if kind == "txt":
                    yield f.read()
                    continue
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield json_text(line, text_field, path, lineno)
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:  # includes zstandard.ZstdError
            raise UserError(f"{path}: cannot read: {e}") from None


def json_text(line: str, text_field: str, path: Path, lineno: int) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    text = obj.get(text_field) if isinstance(obj, dict) else None
    if not isinstance(text, str):
        raise UserError(f"{path}:{lineno}: no string field {text_field!r} (set --text-field)")
    return text


def check_inputs(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        kind = p.name.removesuffix(".zst").rsplit(".", 1)[-1]
        if kind not in ("jsonl", "json", "txt"):
            raise UserError(f"{p}: unknown input type; use .jsonl (a text field per line) or .txt, optionally .zst")
        if not p.is_file():
            raise UserError(f"{p}: no such file")
        out.append(p)
    return out


def cmd_corpus(args) -> None:
    t0 = time.time()
    paths = check_inputs(args.inputs)
    if (args.tokenizer is None) == (args.vocab_size is None):
        raise UserError("give exactly one of --tokenizer PATH (existing) or --vocab-size N (train a new one)")
    if args.tokenizer:
        tok_path = Path(args.tokenizer)
        sp = load_sp(tok_path)
        log(f"tokenizer: {args.tokenizer} ({sp.vocab_size()} pieces)")
    else:
        tok_path = Path(args.tokenizer_out or Path(args.out) / f"tokenizer_{args.vocab_size}_bpe.model")
        train_docs = (t for i, t in enumerate(read_documents(paths, args.text_field)) if i >= args.val_docs)
        log(f"tokenizer: training vocab {args.vocab_size} on up to {args.tokenizer_chars:,} characters of train docs")
        sp = train_tokenizer(training_lines(train_docs, args.tokenizer_chars), args.vocab_size, tok_path)
        log(f"tokenizer: wrote {tok_path}")
    out_dir = Path(args.out)
    report = write_splits(read_documents(paths, args.text_field), sp, out_dir, args.val_docs, args.shard_tokens,
                          args.dedupe, args.threads)
    print_report(report, out_dir, args.dedupe)
    write_provenance(out_dir, "corpus", list(args.inputs), None, report_shards(report, out_dir), tok_path)
    log(f"done in {time.time() - t0:.1f}s")


# ----------------------------------------------------------------------------------------------------------------
# FINEWEB: the challenge's cached export on Hugging Face, verified shard by shard, resumable
# ----------------------------------------------------------------------------------------------------------------

DEFAULT_REPO = "willdepueoai/parameter-golf"
FETCH_ATTEMPTS = 3  # per file: a bad or failed download is fetched again (forced) at most this many times in all


def hub_download(repo_id: str, filename: str, local_dir: Path, force: bool) -> Path:
    """Download one file of the dataset repo into local_dir/filename (the only network access; tests replace it)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError("the fineweb command needs huggingface_hub: pip install huggingface_hub") from None
    if "HF_HUB_VERBOSITY" not in os.environ:  # its retry warnings would precede our one-line error
        try:
            from huggingface_hub.utils import logging as hf_logging
            hf_logging.set_verbosity_error()
        except ImportError:
            pass
    return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", local_dir=str(local_dir),
                                force_download=force))


# Exceptions (by class name, anywhere in the class hierarchy) that mean the hub was not reached, from the HTTP
# libraries huggingface_hub has used (requests, urllib3, httpx) and huggingface_hub itself. A 404 is not among them.
NETWORK_ERRORS = {"ConnectionError", "ConnectTimeout", "Timeout", "ProxyError", "SSLError", "MaxRetryError",
                  "NewConnectionError", "NameResolutionError", "ConnectError", "NetworkError", "TimeoutException",
                  "LocalEntryNotFoundError", "OfflineModeIsEnabled", "gaierror", "TimeoutError"}


def network_cause(e: BaseException) -> BaseException | None:
    """The innermost exception in e's chain (itself, __cause__, __context__) saying the hub could not be reached
    (e.g. "gaierror: Name or service not known" under huggingface_hub's wrappers), or None."""
    seen, found = set(), None
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if NETWORK_ERRORS & {c.__name__ for c in type(e).__mro__}:
            found = e
        e = e.__cause__ or e.__context__
    return found


def hub_unreachable(e: BaseException, repo_id: str, what: str = "") -> UserError | None:
    """A one-line UserError saying the hub cannot be reached and what to do, or None when e is something else."""
    cause = network_cause(e)
    if cause is None:
        return None
    detail = str(cause).splitlines()[0] if str(cause) else ""
    detail = f": {detail[:100]}..." if len(detail) > 100 else f": {detail}" if detail else ""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        why, fix = " (HF_HUB_OFFLINE is set)", "unset HF_HUB_OFFLINE"
    else:
        why, fix = "", "check the network connection, HF_ENDPOINT and any proxy (HTTPS_PROXY)"
    return UserError(f"cannot reach the Hugging Face hub at {endpoint}{why} for dataset {repo_id} "
                     f"({type(cause).__name__}{detail}){what}; {fix}, or build shards offline with "
                     "'python3 data/prepare.py sample' or 'python3 data/prepare.py corpus FILE... --out DIR'")


@dataclass
class RemoteFile:
    remote: str  # path in the repo
    local: Path  # final location
    num_tokens: int | None = None  # shards: expected count (None: the manifest does not say)
    is_shard: bool = True


def fetch(repo_id: str, f: RemoteFile, staging: Path, check) -> str:
    """Make f.local present and valid: keep a valid copy, otherwise download (forced after a bad try) and check."""
    if f.local.exists():
        try:
            return f"present, {check(f.local)}"
        except UserError as e:
            log(f"  {f.local.name}: existing copy is bad ({e}); fetching again")
    why, error = "", None
    for attempt in range(FETCH_ATTEMPTS):
        try:
            got = hub_download(repo_id, f.remote, staging, force=attempt > 0 or f.local.exists())
            f.local.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(got), f.local)
            return f"downloaded, {check(f.local)}"
        except UserError as e:  # the check failed: a 0-byte, truncated or wrong file
            why, error = str(e), None
        except Exception as e:  # network and hub errors: retry, then report
            why, error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", e
        log(f"  {f.local.name}: attempt {attempt + 1}/{FETCH_ATTEMPTS} failed: {why}")
    f.local.unlink(missing_ok=True)  # never leave a bad shard where training would read it
    if error is not None and (unreachable := hub_unreachable(
            error, repo_id, f" while fetching {f.remote} (files fetched so far are kept: run again to resume)")):
        raise unreachable
    raise UserError(f"{f.remote} from {repo_id}: still bad after {FETCH_ATTEMPTS} downloads ({why})")


def shard_check(vocab_size: int | None, expected: int | None):
    def check(path: Path) -> str:
        n = read_shard(path, vocab_size).size
        if n == 0:
            raise UserError(f"{path}: empty shard (0 tokens)")
        if expected is not None and n != expected:
            raise UserError(f"{path}: {n:,} tokens but the manifest says {expected:,}")
        return f"{n:,} tokens"
    return check


def tokenizer_check(vocab_size: int | None):
    def check(path: Path) -> str:
        sp = load_sp(path)
        if vocab_size is not None and sp.vocab_size() != vocab_size:
            raise UserError(f"{path}: {sp.vocab_size()} pieces but the manifest says {vocab_size}")
        return f"{sp.vocab_size()} pieces"
    return check


def manifest_entry(manifest: dict, dataset: str) -> dict:
    """The dataset's entry; "datasets" may be an object keyed by name or a list of objects with a "name"."""
    sets = manifest.get("datasets") if isinstance(manifest, dict) else None
    if isinstance(sets, list):
        sets = {d.get("name"): d for d in sets if isinstance(d, dict)}
    if not isinstance(sets, dict):
        raise UserError("manifest.json has no \"datasets\" object; see data/README.md for the layout")
    if dataset not in sets:
        known = ", ".join(sorted(k.removeprefix("fineweb10B_") for k in sets if isinstance(k, str)))
        raise UserError(f"--variant: {dataset} is not in the manifest (available: {known or 'none'})")
    return sets[dataset]


def shard_list(entry: dict, split: str) -> list[tuple[str, int | None]]:
    """(file name, token count or None) of one split: an explicit list, or a count of fineweb_<split>_NNNNNN.bin."""
    files = entry.get(split)
    if isinstance(files, list):
        return [(f, None) if isinstance(f, str) else (f["name"], f.get("num_tokens")) for f in files]
    count = entry.get(f"files_{split}", entry.get("stats", {}).get(f"files_{split}"))
    if isinstance(count, int):
        return [(f"fineweb_{split}_{i:06d}.bin", None) for i in range(count)]
    raise UserError(f"manifest entry has no {split!r} shard list; see data/README.md for the layout")


def tokenizer_path(entry: dict, manifest: dict) -> str:
    tok = entry.get("tokenizer")
    if isinstance(tok, str):
        return tok
    for t in manifest.get("tokenizers", []):
        if t.get("name") == entry.get("tokenizer_name"):
            return t.get("model_path") or t["path"]
    raise UserError("manifest entry names no tokenizer; see data/README.md for the layout")


def cmd_fineweb(args) -> None:
    t0 = time.time()
    repo_id = os.environ.get("MATCHED_FINEWEB_REPO_ID", DEFAULT_REPO)
    prefix = os.environ.get("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "datasets").strip("/")
    root = Path(args.data_dir)
    staging = root / "datasets" / ".hf_download"
    dataset = f"fineweb10B_{args.variant}"
    log(f"fineweb: {dataset} from {repo_id} (repo_type dataset, folder {prefix}/)")
    try:
        got = hub_download(repo_id, f"{prefix}/manifest.json", staging, force=True)
        manifest = json.loads(Path(got).read_text())
    except UserError:
        raise
    except Exception as e:
        if unreachable := hub_unreachable(e, repo_id):
            raise unreachable from None
        first_line = str(e).splitlines()[0][:200] if str(e) else ""
        raise UserError(f"{prefix}/manifest.json from {repo_id}: {type(e).__name__}: {first_line}") from None
    entry = manifest_entry(manifest, dataset)
    vocab = entry.get("vocab_size")
    train = shard_list(entry, "train")
    if args.train_shards > len(train):
        raise UserError(f"--train-shards {args.train_shards} but the manifest lists only {len(train)} train shards")
    tok_remote = tokenizer_path(entry, manifest)
    folder = root / "datasets" / dataset
    # Train shards of the manifest beyond --train-shards that an earlier run left are checked and recorded too:
    # training reads every shard in the folder.
    earlier = [(name, n) for name, n in train[args.train_shards:] if (folder / name).exists()]
    files = [RemoteFile(f"{prefix}/{tok_remote}", root / "tokenizers" / Path(tok_remote).name, is_shard=False)]
    for split, shards in (("val", shard_list(entry, "val")), ("train", train[:args.train_shards] + earlier)):
        files += [RemoteFile(f"{prefix}/{dataset}/{name}", folder / name, n) for name, n in shards]
    if earlier:
        log(f"note: {len(earlier)} more train shards from an earlier run are present; they are checked and "
            "recorded too, and training will use them")
    for i, f in enumerate(files, 1):
        t = time.time()
        check = shard_check(vocab, f.num_tokens) if f.is_shard else tokenizer_check(vocab)
        status = fetch(repo_id, f, staging, check)
        log(f"[{i}/{len(files)}] {f.local.relative_to(root)}: {status} ({time.time() - t:.1f}s)")
    shutil.rmtree(staging, ignore_errors=True)
    unknown = sorted(set(folder.glob("fineweb_*.bin")) - {f.local for f in files})
    if unknown:
        log(f"warning: {len(unknown)} shard(s) in {folder} are not in the manifest ({unknown[0].name}, ...); they "
            f"are not in {PROVENANCE}, so a training run that reads them fails its data check: delete them")
    write_provenance(folder, "fineweb", f"{repo_id}:{prefix}/{dataset}", args.variant,
                     [f.local for f in files if f.is_shard], files[0].local)
    log(f"done in {time.time() - t0:.1f}s: DATA_PATH={root / 'datasets' / dataset} "
        f"TOKENIZER_PATH={files[0].local}")


# ----------------------------------------------------------------------------------------------------------------
# MAIN
# ----------------------------------------------------------------------------------------------------------------

def positive(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def build_parser() -> ArgParser:
    p = ArgParser(prog="prepare.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    threads = dict(type=positive, default=os.cpu_count() or 1, help="encoding threads (default: all cores)")
    data_dir = dict(default=str(DATA_DIR), help="root holding datasets/ and tokenizers/ (default: the repo's data/)")

    s = sub.add_parser("sample", help="offline sample from text shipped with Python (the PRESET=smoke data)")
    s.add_argument("--data-dir", **data_dir)
    s.add_argument("--threads", **threads)

    c = sub.add_parser("corpus", help="shards from local .jsonl/.txt files (optionally .zst)")
    c.add_argument("inputs", nargs="+", help=".jsonl/.json (one object per line) or .txt (one document per file)")
    c.add_argument("--out", required=True, help="output folder for fineweb_{val,train}_NNNNNN.bin")
    c.add_argument("--tokenizer", help="existing SentencePiece model")
    c.add_argument("--vocab-size", type=positive, help="train a new BPE tokenizer of this size (challenge spec)")
    c.add_argument("--tokenizer-out", help="where the new tokenizer goes (default: OUT/tokenizer_<N>_bpe.model)")
    c.add_argument("--tokenizer-chars", type=positive, default=50_000_000,
                   help="train the new tokenizer on at most this many characters of train documents")
    c.add_argument("--val-docs", type=positive, default=50_000, help="first N documents form the validation split")
    c.add_argument("--shard-tokens", type=positive, default=SHARD_TOKENS, help="tokens per shard file")
    c.add_argument("--text-field", default="text", help="JSON field holding the document text")
    c.add_argument("--dedupe", action="store_true", help="drop train documents that also appear in validation")
    c.add_argument("--threads", **threads)

    f = sub.add_parser("fineweb", help="download the challenge's cached FineWeb shards (needs huggingface_hub)")
    f.add_argument("--variant", default="sp1024", help="tokenization variant: files of fineweb10B_<variant>")
    f.add_argument("--train-shards", type=int, default=80, help="train shards to fetch (100M tokens each)")
    f.add_argument("--data-dir", **data_dir)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "train_shards", 0) < 0:
            raise UserError(f"--train-shards {args.train_shards} must be >= 0")
        {"sample": cmd_sample, "corpus": cmd_corpus, "fineweb": cmd_fineweb}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
