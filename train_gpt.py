"""Parameter Golf training script: an 11-layer GPT, Muon, a normalized n-gram mixer, int6+zstd export, score-first eval.

Launch (8 GPUs, the record configuration; every knob is an environment variable, see --help):
    torchrun --standalone --nproc_per_node=8 train_gpt.py
One process, CPU included (float32 + gloo), e.g. the whole pipeline on the embedded sample in about a minute:
    python3 data/prepare.py sample && PRESET=smoke python3 train_gpt.py
Evaluate an exported artifact again in a fresh process:
    LOAD_ARTIFACT=logs/<run_id>.ptz python3 train_gpt.py

Data flow, one section each: config -> data and byte accounting -> model -> optimizer -> n-gram mixer ->
quantization/export -> evaluation -> main. Line budget: this file stays under 2,000 lines (a test enforces it).
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------------------------
# CONFIG
# Every knob is declared once below: env var, type, default, allowed range, one line of meaning. Defaults are the
# submitted configuration; PRESET=smoke swaps in a tiny CPU run; explicitly set variables always win over a preset.
# ----------------------------------------------------------------------------------------------------------------


class UserError(Exception):
    """A mistake the user can fix (bad env value, missing shard, bad artifact): printed as one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Knob:
    env: str
    kind: type  # int | float | str | bool | list (a comma-separated list of floats)
    default: object
    help: str
    lo: float | None = None  # inclusive bounds for numbers (list: for every element)
    hi: float | None = None
    choices: tuple[str, ...] | None = None


KNOBS: list[tuple[str, list[Knob]]] = [
    ("run and data", [
        Knob("PRESET", str, "", "named bundle of defaults applied before env vars", choices=("", "smoke")),
        Knob("RUN_ID", str, "", "log/artifact name under logs/ (empty: a timestamp)"),
        Knob("SEED", int, 1337, "seed for init, data order and sampling", 0, 2**31 - 1),
        Knob("DATA_PATH", str, "./data/datasets/fineweb10B_sp1024", "folder of fineweb_{train,val}_*.bin shards"),
        Knob("TOKENIZER_PATH", str, "./data/tokenizers/fineweb_1024_bpe.model", "SentencePiece model for byte counts"),
        Knob("VOCAB_SIZE", int, 1024, "tokenizer vocabulary size", 2, 65536),
        Knob("LOAD_ARTIFACT", str, "", "skip training: evaluate this exported .ptz in a fresh model"),
    ]),
    ("training", [
        Knob("ITERATIONS", int, 20000, "optimizer steps at most", 0, 10**7),
        Knob("WARMUP_STEPS", int, 20, "compile warm-up steps on dummy data before the clock (state restored)", 0, 1000),
        Knob("WARMDOWN_ITERS", int, 3500, "linear LR decay over this many final steps (by remaining wallclock)", 0, 10**7),
        Knob("TRAIN_BATCH_TOKENS", int, 786432, "global tokens per step, any world size", 1, 2**31 - 1),
        Knob("TRAIN_SEQ_LEN", int, 2048, "training sequence length", 8, 65536),
        Knob("GRAD_ACCUM_STEPS", int, 0, "micro-steps per step per rank (0: 8 // world size)", 0, 1024),
        Knob("MAX_WALLCLOCK_SECONDS", float, 600.0, "training cap incl. n-gram prefill and export (0: none)", 0, 1e6),
        Knob("VAL_LOSS_EVERY", int, 0, "plain val_bpb every N steps during training (0: only at the end)", 0, 10**7),
        Knob("TRAIN_LOG_EVERY", int, 200, "train_loss line every N steps", 1, 10**7),
    ]),
    ("model", [
        Knob("NUM_LAYERS", int, 11, "transformer blocks", 1, 64),
        Knob("MODEL_DIM", int, 512, "residual width", 16, 8192),
        Knob("NUM_HEADS", int, 8, "query heads", 1, 128),
        Knob("NUM_KV_HEADS", int, 8, "key/value heads (GQA when fewer than NUM_HEADS)", 1, 128),
        Knob("MLP_MULT", float, 3.5, "MLP hidden = MLP_MULT x MODEL_DIM, LeakyReLU(0.5)^2", 0.5, 16),
        Knob("ROPE_DIMS", int, 16, "head dims that get rotary position (partial RoPE)", 0, 1024),
        Knob("ROPE_BASE", float, 10000.0, "RoPE base frequency", 1, 1e9),
        Knob("LOGIT_SOFTCAP", float, 30.0, "logits = cap * tanh(logits / cap)", 1, 1000),
        Knob("QK_GAIN_INIT", float, 1.5, "initial per-head gain on normalized queries", 0, 100),
        Knob("XSA_LAST_N", int, 4, "exclusive self-attention on the last N layers", 0, 64),
        Knob("VE_LAST_N", int, 2, "value embeddings on the last N layers", 0, 64),
        Knob("BIGRAM_VOCAB_SIZE", int, 4096, "BigramHash buckets (0: off)", 0, 2**20),
        Knob("BIGRAM_DIM", int, 128, "BigramHash embedding width", 1, 4096),
    ]),
    ("optimizer", [
        Knob("MATRIX_LR", float, 0.025, "Muon LR for block matrices", 0, 10),
        Knob("SCALAR_LR", float, 0.025, "Adam LR for gains, gates and other small tensors", 0, 10),
        Knob("TIED_EMBED_LR", float, 0.035, "Adam LR for the tied embedding and other tables", 0, 10),
        Knob("MUON_MOMENTUM", float, 0.99, "Muon momentum after warm-up", 0, 1),
        Knob("MUON_MOMENTUM_WARMUP_START", float, 0.92, "Muon momentum at step 0", 0, 1),
        Knob("MUON_MOMENTUM_WARMUP_STEPS", int, 1500, "steps to ramp Muon momentum", 0, 10**7),
        Knob("MUON_WD", float, 0.04, "Muon decoupled weight decay", 0, 1),
        Knob("MUON_NS_STEPS", int, 5, "Newton-Schulz iterations", 1, 20),
        Knob("ADAM_WD", float, 0.04, "Adam decoupled weight decay (embeddings)", 0, 1),
        Knob("GRAD_CLIP_NORM", float, 0.3, "global grad-norm clip (0: off)", 0, 1e6),
        Knob("EMA_DECAY", float, 0.997, "EMA of weights, warmed up as min(decay, (1+t)/(10+t)) (0: off)", 0, 0.99999),
        Knob("SWA_EVERY", int, 50, "average weights every N steps once LR scale < SWA_START_LRMUL (0: off)", 0, 10**6),
        Knob("SWA_START_LRMUL", float, 0.2, "LR multiplier below which SWA snapshots start", 0, 1),
        Knob("LATE_QAT_LRMUL", float, 0.15, "fake-quantize matrices (STE) once LR scale < this (0: off)", 0, 1),
    ]),
    ("n-gram mixer", [
        Knob("MIXER_HEAD", str, "multi", "gate: learned multi-expert, entropy backoff, or none", choices=("multi", "entropy", "none")),
        Knob("MIXER_LOSS_WEIGHT", float, 0.1, "weight of -log p_mix(target) added to CE", 0, 100),
        Knob("MIXER_NEURAL_FLOOR", float, 0.0, "minimum weight of the neural expert", 0, 1),
        Knob("NGRAM_MAX_ORDER", int, 7, "experts for orders 2..N", 2, 32),
        Knob("NGRAM_BUCKETS", int, 4194304, "slots per order and table (power of two)", 16, 2**31),
        Knob("NGRAM_MIN_COUNT", int, 2, "an order is valid iff its context count >= this", 1, 10**9),
        Knob("NGRAM_PREFILL_TOKENS", int, 0, "training tokens counted into the frozen oracle (0: all)", 0, 2**62),
        Knob("NGRAM_SCORING", str, "normalized", "normalized (valid) or hashed_target (the seeds' leaky scoring, invalid)", choices=("normalized", "hashed_target")),
        Knob("NGRAM_EVAL_PREFILL", str, "none", "eval cache starts empty or from training data", choices=("none", "train")),
        Knob("NGRAM_ENT_BASE", float, 0.05, "entropy head: alpha floor", 0, 1),
        Knob("NGRAM_ENT_RANGE", float, 0.55, "entropy head: alpha range", 0, 1),
        Knob("NGRAM_ENT_SCALE", float, 2.0, "entropy head: sigmoid slope", 0, 100),
        Knob("NGRAM_ENT_CENTER", list, [4.0], "entropy head: center in nats, one or one per order high->low", 0, 100),
        Knob("NGRAM_AUDIT_POSITIONS", int, 256, "positions whose mixture is enumerated over the vocab (0: off)", 0, 10**6),
        Knob("COMPLEMENT_ALPHA", float, 0.0, "down-weight CE where the oracle is confident (0: off)", 0, 1),
        Knob("COMPLEMENT_THRESHOLD", float, 0.3, "oracle probability where down-weighting starts", 0, 0.999),
    ]),
    ("quantization", [
        Knob("QUANT_BITS", int, 6, "bits for attention matrices", 2, 8),
        Knob("QUANT_MLP_BITS", int, 6, "bits for MLP matrices", 2, 8),
        Knob("QUANT_EMBED_BITS", int, 8, "bits for embedding tables", 2, 8),
        Knob("ZSTD_LEVEL", int, 22, "zstd level of the artifact", 1, 22),
    ]),
    ("evaluation", [
        Knob("EVAL_SEQ_LEN", int, 0, "context window at eval (0: TRAIN_SEQ_LEN)", 0, 65536),
        Knob("EVAL_STRIDE", int, 64, "sliding-window stride (tokens scored per window)", 1, 65536),
        Knob("EVAL_CHUNK_TOKENS", int, 32768, "score-first chunk: score, then update cache, then TTT", 1, 2**31 - 1),
        Knob("EVAL_BATCH_SEQS", int, 32, "windows per forward at eval", 1, 4096),
        Knob("EVAL_MAX_TOKENS", int, 0, "score only the first N validation targets (0: all)", 0, 2**62),
        Knob("EVAL_MAX_SECONDS", float, 600.0, "eval budget; warn at once when the projection exceeds it", 1, 1e6),
    ]),
    ("test-time training", [
        Knob("TTT_EPOCHS", int, 1, "epochs over each scored chunk (0: off)", 0, 100),
        Knob("TTT_OPTIMIZER", str, "sgd", "optimizer for TTT", choices=("sgd", "adamw")),
        Knob("TTT_LR", float, 0.002, "TTT learning rate", 0, 10),
        Knob("TTT_MOMENTUM", float, 0.9, "SGD momentum / AdamW beta1", 0, 1),
        Knob("TTT_BATCH_SEQS", int, 32, "global sequences per TTT step", 1, 4096),
        Knob("TTT_GRAD_CLIP", float, 1.0, "grad-norm clip (0: off)", 0, 1e6),
        Knob("TTT_FREEZE_BLOCKS", int, 0, "first N blocks stay frozen", 0, 64),
        Knob("TTT_PARAMS", str, "all", "all trainable, or q: query projections only (drift-free)", choices=("all", "q")),
    ]),
]
KNOB_BY_ENV = {k.env: k for _, group in KNOBS for k in group}
# An unknown variable with one of these prefixes is a typo that would silently waste a run.
CHECKED_PREFIXES = ("NGRAM_", "MIXER_", "TTT_", "MUON_", "EVAL_", "QUANT_", "EMA_", "SWA_", "LATE_QAT", "COMPLEMENT_",
                    "BIGRAM_", "XSA_", "VE_", "TRAIN_", "VAL_", "MATRIX_", "SCALAR_", "TIED_", "WARMUP_", "WARMDOWN_",
                    "NUM_", "MODEL_", "MLP_", "ROPE_", "LOGIT_", "QK_", "ADAM_", "GRAD_", "ZSTD_")
PRESETS = {
    # Tiny model on the embedded sample (python3 data/prepare.py sample): every path in about a minute on CPU.
    "smoke": dict(DATA_PATH=str(Path(__file__).parent / "data/datasets/sample_sp1024"),
                  TOKENIZER_PATH=str(Path(__file__).parent / "data/tokenizers/sample_1024_bpe.model"),
                  ITERATIONS=30, WARMUP_STEPS=0, WARMDOWN_ITERS=10, TRAIN_BATCH_TOKENS=4096, TRAIN_SEQ_LEN=128,
                  MAX_WALLCLOCK_SECONDS=0, TRAIN_LOG_EVERY=10, NUM_LAYERS=2, MODEL_DIM=64, NUM_HEADS=4, NUM_KV_HEADS=2,
                  MLP_MULT=2, ROPE_DIMS=8, XSA_LAST_N=1, VE_LAST_N=1, BIGRAM_VOCAB_SIZE=256, BIGRAM_DIM=16,
                  MUON_MOMENTUM_WARMUP_STEPS=10, SWA_EVERY=5, NGRAM_BUCKETS=65536, NGRAM_PREFILL_TOKENS=200000,
                  EVAL_STRIDE=64, EVAL_CHUNK_TOKENS=4096, EVAL_MAX_TOKENS=16384, TTT_BATCH_SEQS=8,
                  NGRAM_AUDIT_POSITIONS=16, ZSTD_LEVEL=3),
}


def parse_value(knob: Knob, raw: str):
    """Parse one env string into the knob's type and range, or raise UserError naming the variable."""
    def bad(why: str):
        allowed = f"one of {list(knob.choices)}" if knob.choices else f"{knob.kind.__name__}"
        if knob.lo is not None:
            allowed += f" in [{knob.lo:g}, {knob.hi:g}]"
        return UserError(f"config error: {knob.env}={raw!r} {why} (allowed: {allowed})")
    text = str(raw).strip()
    try:
        if knob.kind is bool:
            if text.lower() not in ("0", "1", "true", "false", "yes", "no"):
                raise ValueError
            value = text.lower() in ("1", "true", "yes")
        elif knob.kind is list:
            value = [float(x) for x in text.split(",") if x.strip()]
            if not value:
                raise ValueError
        else:
            value = knob.kind(text)
            if knob.kind is float and not math.isfinite(value):
                raise ValueError
    except ValueError:
        raise bad(f"is not a valid {knob.kind.__name__}") from None
    if knob.choices is not None and value not in knob.choices:
        raise bad("is not a known choice")
    for x in value if isinstance(value, list) else ([value] if knob.lo is not None else []):
        if not knob.lo <= x <= knob.hi:
            raise bad("is out of range")
    return value


Hyperparameters = dataclasses.make_dataclass(
    "Hyperparameters", [(k.env.lower(), object) for k in KNOB_BY_ENV.values()], frozen=True,
    namespace={"__doc__": "Resolved configuration: one attribute per knob, named as its env var in lower case."})


def load_hyperparameters(environ: dict[str, str] | None = None) -> Hyperparameters:
    """Resolve defaults <- preset <- environment; reject typos with a did-you-mean and cross-check knobs."""
    environ = dict(os.environ if environ is None else environ)
    for name in sorted(environ):
        if name not in KNOB_BY_ENV and name.startswith(CHECKED_PREFIXES):
            close = difflib.get_close_matches(name, KNOB_BY_ENV, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else "; see python3 train_gpt.py --help"
            raise UserError(f"config error: unknown variable {name}={environ[name]!r}{hint}")
    preset = parse_value(KNOB_BY_ENV["PRESET"], environ.get("PRESET", ""))
    raw = {k: str(v) for k, v in PRESETS.get(preset, {}).items()} | {k: v for k, v in environ.items() if k in KNOB_BY_ENV}
    values = {k.env.lower(): parse_value(k, raw[k.env]) if k.env in raw else k.default for k in KNOB_BY_ENV.values()}
    args = Hyperparameters(**values)
    check_knob_relations(args)
    return args


def check_knob_relations(a) -> None:
    """Constraints between knobs, checked before any data or model work."""
    def need(ok: bool, env: str, why: str):
        if not ok:
            raise UserError(f"config error: {env}={getattr(a, env.lower())!r} {why}")
    need(a.model_dim % a.num_heads == 0, "MODEL_DIM", f"must be divisible by NUM_HEADS={a.num_heads}")
    need(a.num_heads % a.num_kv_heads == 0, "NUM_KV_HEADS", f"must divide NUM_HEADS={a.num_heads}")
    head_dim = a.model_dim // a.num_heads
    need(head_dim % 2 == 0, "MODEL_DIM", "must give an even head dim (MODEL_DIM / NUM_HEADS)")
    need(a.rope_dims % 2 == 0 and a.rope_dims <= head_dim, "ROPE_DIMS", f"must be even and <= head dim {head_dim}")
    need(a.ngram_buckets & (a.ngram_buckets - 1) == 0, "NGRAM_BUCKETS", "must be a power of two")
    n_orders = a.ngram_max_order - 1
    need(len(a.ngram_ent_center) in (1, n_orders), "NGRAM_ENT_CENTER",
         f"must list 1 or {n_orders} centers (orders {a.ngram_max_order}..2)")
    need(a.ttt_freeze_blocks <= a.num_layers, "TTT_FREEZE_BLOCKS", f"must be <= NUM_LAYERS={a.num_layers}")
    need(a.train_batch_tokens % a.train_seq_len == 0, "TRAIN_BATCH_TOKENS",
         f"must be a multiple of TRAIN_SEQ_LEN={a.train_seq_len}")
    need(a.eval_stride <= (a.eval_seq_len or a.train_seq_len), "EVAL_STRIDE", "must be <= the eval sequence length")


def help_table() -> str:
    """The --help text: a markdown table of every knob (the README's configuration table is this output)."""
    lines = ["| variable | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for title, group in KNOBS:
        lines.append(f"| **{title}** | | | | |")
        for k in group:
            default = ",".join(f"{x:g}" for x in k.default) if k.kind is list else k.default
            allowed = "/".join(c or "(empty)" for c in k.choices) if k.choices else (
                f"[{k.lo:g}, {k.hi:g}]" if k.lo is not None else "any")
            lines.append(f"| `{k.env}` | {k.kind.__name__} | `{default}` | {allowed} | {k.help} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# DATA AND BYTE ACCOUNTING
# The challenge's shard format, read by one checked reader (data/prepare.py imports it too), and the byte tables
# that turn nats into bits per byte. Bytes come from the tokenizer's pieces, never from a fixed ratio.
# ----------------------------------------------------------------------------------------------------------------

SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_INTS = 20240520, 1, 256
BOS_ID = 1


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write uint16 tokens with the challenge's 256-int32 header [magic, version, num_tokens, 0, ...]."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise UserError(f"{path}: token ids must fit in uint16")
    header = np.zeros(SHARD_HEADER_INTS, dtype="<i4")
    header[:3] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def read_shard(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Read one shard as uint16, checking magic, version, size and (optionally) that every id < vocab_size."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else -1
    if size < SHARD_HEADER_INTS * 4:
        raise UserError(f"{path}: {'missing' if size < 0 else f'only {size} bytes'}; a shard needs a 1024-byte header")
    header = np.fromfile(path, dtype="<i4", count=SHARD_HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise UserError(f"{path}: wrong magic {header[0]} (expected {SHARD_MAGIC}); not a challenge shard")
    if header[1] != SHARD_VERSION:
        raise UserError(f"{path}: unsupported version {header[1]} (expected {SHARD_VERSION})")
    expected = SHARD_HEADER_INTS * 4 + int(header[2]) * 2
    if size != expected:
        raise UserError(f"{path}: {size} bytes but the header promises {header[2]} tokens ({expected} bytes); "
                        "truncated or corrupt, download it again")
    tokens = np.fromfile(path, dtype="<u2", count=int(header[2]), offset=SHARD_HEADER_INTS * 4)
    if vocab_size is not None and tokens.size and int(tokens.max()) >= vocab_size:
        raise UserError(f"{path}: token id {int(tokens.max())} >= VOCAB_SIZE={vocab_size}; wrong tokenizer or vocab")
    return tokens


def list_shards(data_path: str, split: str) -> list[Path]:
    """The sorted shard files of one split ('train' or 'val'), or a UserError saying how to get them."""
    files = sorted(Path(p) for p in glob.glob(os.path.join(data_path, f"fineweb_{split}_*.bin")))
    if not files:
        raise UserError(f"DATA_PATH={data_path!r} has no fineweb_{split}_*.bin shards; run "
                        "'python3 data/prepare.py sample' (tiny, offline) or 'python3 data/prepare.py fineweb'")
    return files


def load_tokenizer(path: str, vocab_size: int):
    """Load the SentencePiece model and check it matches VOCAB_SIZE."""
    import sentencepiece as spm
    if not Path(path).is_file():
        raise UserError(f"TOKENIZER_PATH={path!r} does not exist; it is needed to count bytes for val_bpb")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    if sp.vocab_size() != vocab_size:
        raise UserError(f"TOKENIZER_PATH={path!r} has {sp.vocab_size()} pieces but VOCAB_SIZE={vocab_size}")
    return sp


@dataclasses.dataclass
class ByteTables:
    """Per-token byte accounting: a target's bytes = base + (leading space and previous token not a boundary)."""
    base_bytes: Tensor  # int64 [V]: UTF-8 bytes of the piece without its leading '▁'; byte pieces count 1
    leading_space: Tensor  # bool [V]: the piece starts with '▁'
    is_boundary: Tensor  # bool [V]: control/unknown/unused ids: 0 bytes, and the next token's space is not counted

    @classmethod
    def from_tokenizer(cls, sp, vocab_size: int) -> "ByteTables":
        base = np.zeros(vocab_size, np.int64)
        space, boundary = np.zeros(vocab_size, bool), np.ones(vocab_size, bool)
        for i in range(sp.vocab_size()):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            space[i] = piece.startswith("\u2581")
            base[i] = len(piece[1:].encode() if space[i] else piece.encode())
        return cls(torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary))

    def target_bytes(self, prev: Tensor, target: Tensor) -> Tensor:
        """Bytes of each target token given the token before it (same shapes, any device)."""
        dev = target.device
        base, space, boundary = self.base_bytes.to(dev), self.leading_space.to(dev), self.is_boundary.to(dev)
        return base[target] + (space[target] & ~boundary[prev]).long()


class TokenStream:
    """Endless sequential reader over the train shards; every rank reads the same stream and keeps its own span."""

    def __init__(self, files: list[Path], vocab_size: int):
        self.files, self.vocab_size, self.file_idx = files, vocab_size, 0
        self.tokens, self.pos = read_shard(files[0], vocab_size), 0

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            if self.pos >= self.tokens.size:
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self.tokens, self.pos = read_shard(self.files[self.file_idx], self.vocab_size), 0
            part = self.tokens[self.pos:self.pos + n]
            parts.append(part)
            self.pos += part.size
            n -= part.size
        return np.concatenate(parts)


def next_micro_batch(stream: TokenStream, global_tokens: int, seq_len: int, rank: int, world: int,
                     device: torch.device) -> tuple[Tensor, Tensor]:
    """Inputs and targets [B, seq_len] for this rank's share of one global micro-batch of global_tokens tokens."""
    per_rank = global_tokens // world
    chunk = stream.take(global_tokens + world)  # +1 token per rank so each span has its own shifted targets
    span = torch.from_numpy(chunk[rank * (per_rank + 1):(rank + 1) * (per_rank + 1)].astype(np.int64))
    x, y = span[:-1].view(-1, seq_len), span[1:].view(-1, seq_len)
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def load_validation_tokens(data_path: str, vocab_size: int, max_targets: int) -> Tensor:
    """All validation tokens concatenated (int64, CPU); with max_targets > 0 only the first max_targets + 1."""
    tokens = np.concatenate([read_shard(f, vocab_size) for f in list_shards(data_path, "val")])
    if max_targets:
        tokens = tokens[:max_targets + 1]
    if tokens.size < 2:
        raise UserError(f"DATA_PATH={data_path!r}: validation split has fewer than 2 tokens")
    return torch.from_numpy(tokens.astype(np.int64))
