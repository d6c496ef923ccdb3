"""Build the token shards train_gpt.py reads: an offline sample, any local corpus, or the challenge's cached FineWeb.

    python3 data/prepare.py sample                      # offline: stdlib text -> data/datasets/sample_sp1024
    python3 data/prepare.py corpus docs.jsonl.zst --tokenizer tok.model --val-docs 1000 --out data/datasets/mine
    python3 data/prepare.py fineweb --variant sp1024 --train-shards 10   # needs internet and huggingface_hub

Shards use the challenge's format and are written and checked by train_gpt.py's write_shard/read_shard (one reader
for the whole project). Every document is [BOS] + sp.encode(text); the validation split is the first N documents.
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

    A train document whose exact text is also a validation document is reported, and dropped when dedupe is set.
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
    for batch, ids in encoded_batches(texts, sp, threads):
        for text, doc_ids in zip(batch, ids):
            digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()
            doc = np.array([BOS_ID] + doc_ids, dtype=np.uint16)
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
        sp = load_sp(Path(args.tokenizer))
        log(f"tokenizer: {args.tokenizer} ({sp.vocab_size()} pieces)")
    else:
        tok_out = Path(args.tokenizer_out or Path(args.out) / f"tokenizer_{args.vocab_size}_bpe.model")
        train_docs = (t for i, t in enumerate(read_documents(paths, args.text_field)) if i >= args.val_docs)
        log(f"tokenizer: training vocab {args.vocab_size} on up to {args.tokenizer_chars:,} characters of train docs")
        sp = train_tokenizer(training_lines(train_docs, args.tokenizer_chars), args.vocab_size, tok_out)
        log(f"tokenizer: wrote {tok_out}")
    out_dir = Path(args.out)
    report = write_splits(read_documents(paths, args.text_field), sp, out_dir, args.val_docs, args.shard_tokens,
                          args.dedupe, args.threads)
    print_report(report, out_dir, args.dedupe)
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
    return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", local_dir=str(local_dir),
                                force_download=force))


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
    why = ""
    for attempt in range(FETCH_ATTEMPTS):
        try:
            got = hub_download(repo_id, f.remote, staging, force=attempt > 0 or f.local.exists())
            f.local.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(got), f.local)
            return f"downloaded, {check(f.local)}"
        except UserError as e:  # the check failed: a 0-byte, truncated or wrong file
            why = str(e)
        except Exception as e:  # network and hub errors: retry, then report
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log(f"  {f.local.name}: attempt {attempt + 1}/{FETCH_ATTEMPTS} failed: {why}")
    f.local.unlink(missing_ok=True)  # never leave a bad shard where training would read it
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
        first_line = str(e).splitlines()[0][:200] if str(e) else ""
        raise UserError(f"{prefix}/manifest.json from {repo_id}: {type(e).__name__}: {first_line}") from None
    entry = manifest_entry(manifest, dataset)
    vocab = entry.get("vocab_size")
    train = shard_list(entry, "train")
    if args.train_shards > len(train):
        raise UserError(f"--train-shards {args.train_shards} but the manifest lists only {len(train)} train shards")
    tok_remote = tokenizer_path(entry, manifest)
    files = [RemoteFile(f"{prefix}/{tok_remote}", root / "tokenizers" / Path(tok_remote).name, is_shard=False)]
    for split, shards in (("val", shard_list(entry, "val")), ("train", train[:args.train_shards])):
        files += [RemoteFile(f"{prefix}/{dataset}/{name}", root / "datasets" / dataset / name, n) for name, n in shards]
    for i, f in enumerate(files, 1):
        t = time.time()
        check = shard_check(vocab, f.num_tokens) if f.is_shard else tokenizer_check(vocab)
        status = fetch(repo_id, f, staging, check)
        log(f"[{i}/{len(files)}] {f.local.relative_to(root)}: {status} ({time.time() - t:.1f}s)")
    shutil.rmtree(staging, ignore_errors=True)
    extra = sorted(set((root / "datasets" / dataset).glob("fineweb_train_*.bin")) - {f.local for f in files})
    if extra:
        log(f"note: {len(extra)} more train shards from an earlier run are present and will be used too")
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
