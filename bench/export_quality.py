"""Export quality on one trained model: RTN vs GPTQ (at the default clips and at matched bytes), the tied
embedding with or without its Hessian, compressors and layouts of the code stream, and a clip sweep.

    python3 bench/export_quality.py                      # train once (cached), then tables A, B, C
    BENCH_TABLES= python3 bench/export_quality.py        # only train and cache the model
    BENCH_TABLES=B BENCH_RETRAIN=1 python3 bench/export_quality.py

Model (CPU): PRESET=smoke with NUM_LAYERS=4 MODEL_DIM=128 TRAIN_SEQ_LEN=256 TRAIN_BATCH_TOKENS=2048 ITERATIONS=300
MIXER_HEAD=none GPTQ_CALIBRATION_TOKENS=65536 on the README's docs corpus (DATA_PATH=data/datasets/docs_sp1024,
TOKENIZER_PATH=../shared/data/fineweb_1024_bpe.model, both from the repository root; 0.66M parameters, 0.61M
training tokens). Any train_gpt knob set in the environment overrides these; QUANT_*
knobs set the reference bits and clips. The weights and Hessians that train() returns are cached under BENCH_CACHE
(default logs/bench_export in the repository), keyed by the training configuration; BENCH_RETRAIN=1 trains again.
BENCH_VAL_TOKENS (131072): validation targets scored, plain eval (stride = seq_len), neural only.
BENCH_TABLES (A,B,C), BENCH_CLIPS (4,6,8,10,12.85), BENCH_SWEEP_METHODS (gptq; gptq,rtn adds RTN): what to run.
Measured on 2 CPU cores shared with other jobs: training 104-491 s (once, then cached), tables A+B+C 483-537 s (each
eval 20-30 s; A about 5 min, B 30 s, C 2-3 min). Every number is one export and one eval of one model.
"""
import dataclasses
import hashlib
import json
import lzma
import os
import sys
import time
from pathlib import Path

import brotli
import torch
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402

DEFAULTS = dict(PRESET="smoke", DATA_PATH=str(ROOT / "data/datasets/docs_sp1024"),
                TOKENIZER_PATH=str(ROOT.parent / "shared/data/fineweb_1024_bpe.model"),
                NUM_LAYERS="4", MODEL_DIM="128", TRAIN_SEQ_LEN="256", TRAIN_BATCH_TOKENS="2048", ITERATIONS="300",
                MAX_WALLCLOCK_SECONDS="0", MIXER_HEAD="none", GPTQ_CALIBRATION_TOKENS="65536", TRAIN_LOG_EVERY="25",
                VAL_LOSS_EVERY="0")
CACHE = Path(os.environ.get("BENCH_CACHE", ROOT / "logs/bench_export"))
VAL_TOKENS = int(os.environ.get("BENCH_VAL_TOKENS", 131072))
TABLES = os.environ.get("BENCH_TABLES", "A,B,C").upper().split(",")
CLIPS = [float(k) for k in os.environ.get("BENCH_CLIPS", "4,6,8,10,12.85").split(",")]
SWEEP_METHODS = os.environ.get("BENCH_SWEEP_METHODS", "gptq").split(",")
ROLE_ORDER = ("embed", "attn", "mlp")  # embed first: zstd-22 lost 6% with it last


def log(msg, console=True):
    if console:
        print(msg, file=sys.stderr, flush=True)


def trained(a, env: dict) -> tuple[dict, dict, dict]:
    """(weights, Hessians, info) from the cache, or from train_gpt's own train() (and then cached)."""
    env = {k: v for k, v in env.items() if not k.startswith(("QUANT_", "EVAL_", "TTT_", "ARTIFACT_"))}  # training only
    key = hashlib.sha256(json.dumps(sorted(env.items())).encode()).hexdigest()[:12]
    path = CACHE / f"model_{key}.pt"
    if path.is_file() and os.environ.get("BENCH_RETRAIN", "0") != "1":
        log(f"cached model: {path}")
        c = torch.load(path, weights_only=True)
        return c["weights"], c["hessians"], c["info"]
    a, rt = dataclasses.replace(a, quant_method="gptq"), tg.Runtime(0, 1, 0, torch.device("cpu"), log, "export_quality")
    torch.manual_seed(a.seed)
    model = tg.build_model(tg.ModelConfig.from_args(a), rt.device)
    plan = tg.quantized_roles(tg.parameter_roles(model), a)
    tr = tg.Trainer(model, tg.build_optimizers(model, a), tg.MixerConfig.from_args(a), a, rt, tg.grad_accum_steps(a, 1))
    weights, hessians, seconds = tg.train(tr, None, plan)
    info = dict(train_seconds=seconds, steps=rt.summary["train"]["steps"], env=env)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(dict(weights=weights, hessians=hessians, info=info), path)
    log(f"trained in {seconds:.0f}s, cached: {path}")
    return weights, hessians, info


class Bench:
    def __init__(self, a, weights, hessians):
        self.a, self.weights, self.hessians = a, weights, hessians
        self.cfg = tg.ModelConfig.from_args(a)
        self.model = tg.build_model(self.cfg, torch.device("cpu"))
        self.roles = tg.parameter_roles(self.model)
        self.params = sum(v.numel() for v in weights.values())
        sp = tg.load_tokenizer(a.tokenizer_path, a.vocab_size)
        val = tg.scored_part(tg.load_validation_tokens(a.data_path, a.vocab_size), VAL_TOKENS)
        seq = a.eval_seq_len or a.train_seq_len
        self.ev = tg.Evaluator(self.model, tg.MixerConfig.from_args(a), tg.ByteTables.from_tokenizer(sp, a.vocab_size),
                               val, seq, a.eval_batch_seqs, 0, 1, lambda m: None)
        self.pre = self.bpb(weights)
        self.memo = {}

    def bpb(self, state: dict) -> float:
        self.model.load_state_dict(state)
        return tg.evaluate(self.ev, "bench", self.ev.seq_len, self.ev.tokens.numel()).val_bpb

    def args(self, method="gptq", bits=6, mlp_bits=6, clip=None, embed_bits=None):
        a = self.a
        k_attn, k_mlp = clip or (a.quant_clip_attn, a.quant_clip_mlp)
        return dataclasses.replace(a, quant_method=method, quant_bits=bits, quant_mlp_bits=mlp_bits,
                                   quant_clip_attn=k_attn, quant_clip_mlp=k_mlp,
                                   quant_embed_bits=embed_bits or a.quant_embed_bits)

    def export(self, a, widen=1.0, emb_hessian=True) -> tuple[dict, bytes, float]:
        """train_gpt's export path at one widening: quantize_state (GPTQ where a Hessian is given), then the
        artifact as serialize_artifact writes it; returns (qstate, blob, seconds)."""
        t0 = time.perf_counter()
        h = None
        if a.quant_method == "gptq":
            h = {k: v for k, v in self.hessians.items() if emb_hessian or k != "tok_emb.weight"}
        q = tg.quantize_state(self.weights, tg.quantized_roles(self.roles, a), widen, h)
        blob = tg.serialize_artifact(q, self.cfg, tg.eval_settings(a))
        return q, blob, time.perf_counter() - t0

    def row(self, a, widen=1.0, emb_hessian=True) -> dict:
        key = (a.quant_method, a.quant_bits, a.quant_mlp_bits, a.quant_embed_bits, a.quant_clip_attn,
               a.quant_clip_mlp, round(widen, 6), emb_hessian)
        if key not in self.memo:
            q, blob, secs = self.export(a, widen, emb_hessian)
            rt = self.bpb(tg.dequantize_state(q))
            self.memo[key] = dict(q=q, bytes=len(blob), secs=secs, rt=rt, widen=widen)
            log(f"{key}: bytes {len(blob)} roundtrip {rt:.4f}")
        return self.memo[key]

    def matched_widen(self, a, target: int) -> float:
        """The RTN widening whose artifact is the largest one not over `target` bytes (bisection on real bytes;
        RTN bytes fall as the clip widens)."""
        size = lambda w: len(self.export(a, w)[1])
        lo, hi = 0.5, 2.0
        while size(lo) <= target:
            lo /= 2
        while size(hi) > target:
            hi *= 2
        for _ in range(9):
            mid = (lo * hi) ** 0.5
            lo, hi = (lo, mid) if size(mid) <= target else (mid, hi)
        return hi

    def fmt(self, label, r, extra=""):
        return (f"| {label} | {self.pre:.4f} | {r['rt']:.4f} | {r['rt'] - self.pre:+.4f} | "
                f"{8 * r['bytes'] / self.params:.3f} | {r['bytes']:,} | {r['secs']:.1f} |{extra}")


def table_a(b: Bench):
    print("\n### A. RTN vs GPTQ (embedding tables int%d, k_embed %g)\n" % (b.a.quant_embed_bits, b.a.quant_clip_embed))
    print("| export | pre-export val_bpb | round-trip val_bpb | cost | bits/param | bytes | export s | widen |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for name, (bits, mlp_bits) in (("int5", (5, 5)), ("int6", (6, 6)), ("int5 MLP + int6 attn", (6, 5))):
        rtn, gptq = (b.row(b.args(m, bits, mlp_bits)) for m in ("rtn", "gptq"))
        w = b.matched_widen(b.args("rtn", bits, mlp_bits), gptq["bytes"])
        matched = b.row(b.args("rtn", bits, mlp_bits), w)
        for label, r in (("rtn", rtn), ("gptq", gptq), ("rtn at GPTQ's bytes", matched)):
            print(b.fmt(f"{name} {label}", r, f" {r['widen']:.3f} |"))
        g, r = gptq["rt"] - b.pre, matched["rt"] - b.pre
        ratio = f"{g / r:.2f} ({'meets' if g / r <= 0.5 else 'misses'} <= 0.5)" if r > 0 else "n/a (RTN cost <= 0)"
        verdicts.append(f"{name}: GPTQ cost {g:+.4f} / RTN cost {r:+.4f} at matched bytes = {ratio}; RTN at widen 1 "
                        f"vs {matched['widen']:.3f}: {abs(rtn['rt'] - matched['rt']):.4f} apart")
    for bits in sorted({b.a.quant_embed_bits, 6}, reverse=True):
        for emb_h, label in ((True, "with its Hessian (GPTQ)"), (False, "plain rounding")):
            r = b.row(b.args("gptq", 6, 6, embed_bits=bits), emb_hessian=emb_h)
            print(b.fmt(f"int6 gptq, embedding tables int{bits}, tok_emb {label}", r, " 1.000 |"))
    print("\n" + "\n".join(f"- {v}" for v in verdicts))
    print("- RTN at widen 1 vs the matched widen (clips < 3% apart) shows one export's rounding noise: treat cost "
          "differences of that size as ties")
    print("- cost = round-trip - pre-export; bits/param = 8 x model bytes (train_gpt.compress, code excluded) / all "
          "parameters; export s = quantize + serialize + compress, one run")


def layouts(q: dict, roles: dict, raw: bytes) -> dict[str, list[bytes]]:
    """Streams compressed one by one: (a) what serialize_artifact compresses; (b) codes grouped by role (embed, attn,
    mlp); (c) each tensor transposed (column-major), grouped; (d) the header and each group of (b) on its own."""
    head = raw[:8 + int.from_bytes(raw[:8], "little")]
    group = lambda r, f: b"".join(f(v["q"]).numpy().tobytes() for k, v in q.items() if "q" in v and roles[k] == r)
    rows, cols = ([group(r, f) for r in ROLE_ORDER] for f in (lambda t: t.contiguous(), lambda t: t.T.contiguous()))
    return {"(a) as serialized": [raw], "(b) grouped by role": [head + b"".join(rows)],
            "(c) transposed + grouped": [head + b"".join(cols)], "(d) header + each group of (b) apart": [head] + rows}


COMPRESSORS = {
    "zstd-22 (threads=-1)": (lambda d: zstandard.ZstdCompressor(level=22, threads=-1).compress(d),
                             lambda c, n: zstandard.ZstdDecompressor().decompress(c, max_output_size=n)),
    "xz -9e": (lambda d: lzma.compress(d, check=lzma.CHECK_CRC64, preset=9 | lzma.PRESET_EXTREME),
               lambda c, n: lzma.decompress(c)),
    "brotli-11": (lambda d: brotli.compress(d, quality=11), lambda c, n: brotli.decompress(c)),
    "train_gpt.compress": (tg.compress, lambda c, n: tg.decompress(c)),  # what the artifact uses now
}


def table_b(b: Bench):
    q = b.row(b.args("gptq", 6, 6))["q"]
    compress, tg.compress = tg.compress, lambda d: d  # the raw stream serialize_artifact would compress
    try:
        raw = tg.serialize_artifact(q, b.cfg, tg.eval_settings(b.a))
    finally:
        tg.compress = compress
    n_codes = sum(v["q"].numel() for v in q.values() if "q" in v)
    print(f"\n### B. Compressing the GPTQ int6 code stream ({len(raw):,} bytes raw, {n_codes:,} codes)\n")
    print("| compressor | layout | bytes | bits/quantized param | vs xz (a) | compress s | decompress s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for cname, (comp, decomp) in COMPRESSORS.items():
        for lname, streams in layouts(q, b.roles, raw).items():
            t0 = time.perf_counter()
            packed = [comp(d) for d in streams]
            t1 = time.perf_counter()
            assert [decomp(c, len(d)) for c, d in zip(packed, streams)] == streams, (cname, lname)
            rows.append((cname, lname, sum(map(len, packed)), t1 - t0, time.perf_counter() - t1))
    base = next(n for cname, lname, n, _, _ in rows if cname.startswith("xz") and lname.startswith("(a)"))
    for cname, lname, n, tc, td in rows:
        print(f"| {cname} | {lname} | {n:,} | {8 * n / n_codes:.3f} | {n / base - 1:+.2%} | {tc:.2f} | {td:.2f} |")
    print(f"\n- order-0 entropy of each tensor's codes + raw scales and fp16 tensors (estimated_bytes): "
          f"{tg.estimated_bytes(q):,.0f} bytes; timings: one run each, perf_counter, 2 shared CPU cores")


def table_c(b: Bench):
    print(f"\n### C. Clip sweep, int6, k = QUANT_CLIP_ATTN = QUANT_CLIP_MLP (k_embed {b.a.quant_clip_embed:g})\n")
    print("| method | k | bytes | bits/param | round-trip val_bpb | cost |\n|---|---|---|---|---|---|")
    for method in SWEEP_METHODS:
        for k in CLIPS:
            r = b.row(b.args(method, 6, 6, clip=(k, k)))
            print(f"| {method} | {k:g} | {r['bytes']:,} | {8 * r['bytes'] / b.params:.3f} | {r['rt']:.4f} | "
                  f"{r['rt'] - b.pre:+.4f} |", flush=True)


def main():
    env = DEFAULTS | {k: v for k, v in os.environ.items() if k in tg.KNOB_BY_ENV}
    a = tg.load_hyperparameters(env)
    weights, hessians, info = trained(a, env)
    if not any(t in TABLES for t in "ABC"):
        return
    t0 = time.perf_counter()
    b = Bench(a, weights, hessians)
    quantized = sum(weights[k].numel() for k in tg.quantized_roles(b.roles, a))
    print(f"model: {a.num_layers} layers, dim {a.model_dim}, {b.params:,} parameters ({quantized:,} quantized), "
          f"{info['steps']} steps x {a.train_batch_tokens} tokens (seq {a.train_seq_len}), trained "
          f"{info['train_seconds']:.0f}s on cpu; val: first {b.ev.tokens.numel() - 1:,} targets, stride "
          f"{b.ev.seq_len}; pre-export val_bpb {b.pre:.4f}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for t, fn in (("A", table_a), ("B", table_b), ("C", table_c)):
        if t in TABLES:
            fn(b)
    print(f"\n(tables took {time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
