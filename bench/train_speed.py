"""Training step speed of today's train_gpt.py (and, on request, a baseline commit), in one process on one config.

    python3 bench/train_speed.py                        # the default 11-layer config on one GPU (6 models, each
                                                        # compiled; with BENCH_BASELINE 8: ~10 min on an H100).
                                                        # bench/preflight.py's speed stage gives ms/step, tokens/s
                                                        # and memory with the mixer off and on in ~70 s (one H200)
    PRESET=smoke python3 bench/train_speed.py           # tiny, on CPU: ~1 min on 2 cores
    PRESET=smoke NUM_LAYERS=4 MODEL_DIM=128 TRAIN_BATCH_TOKENS=16384 TRAIN_SEQ_LEN=256 python3 bench/train_speed.py
                                                        # a little bigger, on CPU: ~4 min on 2 cores
On a CPU shared with other work, prefix OMP_NUM_THREADS=1 (two threads on two busy cores spin against each other).
Model and mixer knobs come from the environment as in train_gpt.py (TRAIN_BATCH_TOKENS, NGRAM_MAX_ORDER, ...).
Bench knobs: BENCH_STEPS (10) timed steps after BENCH_WARM (3) untimed ones; BENCH_ORACLE_TOKENS (2,000,000)
counted into the oracle (a real run counts the whole training set: raise it to see lookups in bigger tables);
BENCH_BASELINE (none; e.g. 8ce0b6e, the commit measured on the H100 in GPU_MEASUREMENTS.md: needs a clone whose
history holds it); BENCH_ACCUM
("1,2,4,8"; empty skips the sweep): the GRAD_ACCUM_STEPS values to sweep.

Prints, for MIXER_HEAD none, multi (the default: no oracle, MIXER_LOSS_WEIGHT=0) and multi+oracle
(MIXER_LOSS_WEIGHT=0.1, the seeds' oracle-trained gate), today's train_step(tr, loader, lr_mul, momentum) and the baseline's
train_step(model, optimizers, stream, ...) on the same config, tokens and oracle counts, each followed by the EMA
update as the training loop runs it. Every step ends in a synchronize (the loop's per-step clock read does the
same) and every figure is the median over steps, which a shared machine's other processes disturb least:
  ms/step, tokens/s, peak GiB   from BENCH_STEPS steps (peak: CUDA only, n/a on a CPU);
  the split per step            from BENCH_STEPS more steps that synchronize (CUDA) around every part: data wait
                                (blocked in loader.next(), or in the baseline's next_micro_batch), oracle lookups
                                (NgramCache.keys and .expert_probs, separately), optimizer (Muon, Adam, EMA update),
                                grad clip, and forward+backward = the rest of the step.
Then the GRAD_ACCUM_STEPS sweep (fastest that fits in memory; torch.cuda.OutOfMemoryError is caught) and, on CUDA,
forward+backward of the attention shape under each SDPA backend (and FlashAttention 3 when installed).
Tokens: the training shards of DATA_PATH when present, else random tokens (train_gpt.RandomTokens).
"""
import contextlib
import gc
import importlib.util
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402

STEPS, WARM = int(os.environ.get("BENCH_STEPS", 10)), int(os.environ.get("BENCH_WARM", 3))
ORACLE_TOKENS = int(os.environ.get("BENCH_ORACLE_TOKENS", 2_000_000))
BASELINE = os.environ.get("BENCH_BASELINE", "none")
ACCUMS = [int(x) for x in os.environ.get("BENCH_ACCUM", "1,2,4,8").split(",") if x.strip()]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"


def sync():
    if CUDA:
        torch.cuda.synchronize()


def quiet_log(msg, console=True):
    pass


class Timers:
    """Seconds per named part of a step. wrap(name, fn) times fn while on (synchronizing before and after on CUDA,
    so a part is charged for its own kernels), and costs nothing while off."""

    def __init__(self):
        self.on, self.s = False, defaultdict(float)

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                self.s[name] += time.perf_counter() - t0
        return timed


@contextlib.contextmanager
def timed_clip(timers: Timers):
    """Both train_steps call torch.nn.utils.clip_grad_norm_ by attribute, so a patched attribute times it."""
    original = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = timers.wrap("clip", original)
    try:
        yield
    finally:
        torch.nn.utils.clip_grad_norm_ = original


def load_baseline(commit: str):
    """That commit's train_gpt.py (git show) imported as its own module."""
    got = subprocess.run(["git", "show", f"{commit}:train_gpt.py"], cwd=ROOT, capture_output=True, text=True)
    if got.returncode:
        sys.exit(f"BENCH_BASELINE={commit}: not in this clone's history ({got.stderr.strip()}); fetch it, or unset "
                 "BENCH_BASELINE to measure today's code alone")
    src = got.stdout
    path = Path(tempfile.mkdtemp(prefix="bench_baseline_")) / f"train_gpt_{commit}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def token_source(a):
    """A fresh stream (same tokens every call): the training shards when DATA_PATH has them, else random."""
    try:
        return tg.TokenStream(tg.list_shards(a.data_path, "train"), a.vocab_size)
    except tg.UserError:
        return tg.RandomTokens(a.vocab_size, 0)


def filled_oracle(mod, a):
    """mod's training oracle over the stream's first ORACLE_TOKENS tokens, built as mod's prefill_ngram_cache builds
    it on one rank (same table kind, same block size), so lookups probe populated tables; returns (cache, tokens
    counted) or (None, 0) when the head needs no oracle."""
    old = getattr(mod, "needs_oracle", None)  # a baseline commit's (before MixerConfig.needs_oracle)
    if not (old(a) if old else mod.MixerConfig.from_args(a).needs_oracle):
        return None, 0
    frozen = {"frozen": True} if "frozen" in inspect.signature(mod.new_cache).parameters else {}
    cache, toks = mod.new_cache(a, DEVICE, **frozen), torch.from_numpy(token_source(a).take(ORACLE_TOKENS).astype("int64"))
    span = len(cache.orders)
    block = max(1 << 18, (1 << 25) // span)  # prefill_ngram_cache's default block_tokens at world size 1
    for s in range(0, toks.numel() - 1, block):
        s0 = max(0, s - span)
        cache.add(*mod.stream_key_counts(cache, toks[s0:s + block].to(DEVICE), max(s - s0, 1)))
    return cache, toks.numel()


class Today:
    """today's train_step(tr, loader, lr_mul, momentum) + the EMA update, as train() runs them."""

    def __init__(self, a, timers: Timers):
        self.a, accum = a, tg.grad_accum_steps(a, 1)
        rt = tg.Runtime(0, 1, 0, DEVICE, quiet_log, "bench")
        torch.manual_seed(0)
        self.model = tg.build_model(tg.ModelConfig.from_args(a), DEVICE)
        oracle, counted = filled_oracle(tg, a)
        self.tr = tg.Trainer(self.model, tg.build_optimizers(self.model, a), tg.MixerConfig.from_args(a), a, rt,
                             accum, oracle, counted)
        self.loader = tg.BatchLoader(token_source(a), a.train_batch_tokens // accum, a.train_seq_len, rt)
        self.averager = tg.WeightAverager(self.model, a.ema_decay)
        self.loader.next = timers.wrap("data", self.loader.next)
        self.averager.update = timers.wrap("ema", self.averager.update)
        muon, adam = self.tr.optimizers
        muon.step, adam.step = timers.wrap("muon", muon.step), timers.wrap("adam", adam.step)
        if oracle is not None:
            oracle.keys, oracle.expert_probs = timers.wrap("keys", oracle.keys), timers.wrap("probs", oracle.expert_probs)

    def step(self, i: int):
        tg.train_step(self.tr, self.loader, 1.0, self.a.muon_momentum)
        self.averager.update(self.model)

    def close(self):
        self.loader.close()


class Baseline:
    """The baseline commit's train_step(model, optimizers, stream, oracle, mixer, a, rt, accum, lr_mul, step,
    oracle_tokens) + its EMA update; its config gets only the knobs it knows."""

    def __init__(self, old, env: dict, timers: Timers):
        self.old, a = old, old.load_hyperparameters({k: v for k, v in env.items() if k in old.KNOB_BY_ENV})
        self.a, self.accum = a, old.grad_accum_steps(a, 1)
        self.rt = old.Runtime(0, 1, 0, DEVICE, quiet_log, "bench")
        torch.manual_seed(0)
        self.model = old.build_model(old.ModelConfig.from_args(a), DEVICE)
        self.opts, self.mixer = old.build_optimizers(self.model, a), old.MixerConfig.from_args(a)
        self.oracle, self.counted = filled_oracle(old, a)
        self.stream, self.averager = token_source(a), old.WeightAverager(self.model, a.ema_decay)
        self.original_batch = old.next_micro_batch
        old.next_micro_batch = timers.wrap("data", self.original_batch)  # this module is ours alone
        self.averager.update = timers.wrap("ema", self.averager.update)
        self.opts[0].step, self.opts[1].step = timers.wrap("muon", self.opts[0].step), timers.wrap("adam", self.opts[1].step)
        if self.oracle is not None:
            o = self.oracle
            o.keys, o.expert_probs = timers.wrap("keys", o.keys), timers.wrap("probs", o.expert_probs)

    def step(self, i: int):
        self.old.train_step(self.model, self.opts, self.stream, self.oracle, self.mixer, self.a, self.rt, self.accum,
                            1.0, i, self.counted)
        self.averager.update(self.model)

    def close(self):
        self.old.next_micro_batch = self.original_batch


def free_memory():
    """Between measurements: drop the last model's memory and compiled graphs (each measurement compiles its own,
    during its warm-up steps, and never meets torch.compile's recompile limit)."""
    gc.collect()
    if CUDA:
        torch._dynamo.reset()
        torch.cuda.empty_cache()


def measure(make, tokens_per_step: int, split: bool = True) -> dict:
    """BENCH_WARM untimed steps, BENCH_STEPS timed ones (ms/step, peak memory), then BENCH_STEPS with the parts
    timed (the split). Each step ends in a synchronize, as train()'s per-step clock read (.item()) does; every
    figure is the median over steps, which a shared machine's other processes disturb least."""
    timers = Timers()
    runner = make(timers)
    try:
        for i in range(WARM):
            runner.step(i)
        sync()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(WARM, WARM + STEPS):
            t0 = time.perf_counter()
            runner.step(i)
            sync()
            times.append((time.perf_counter() - t0) * 1000)
        ms = statistics.median(times)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if CUDA else "n/a"  # torch tracks no CPU peak
        steps, timers.on = [], True
        with timed_clip(timers):
            for i in range(WARM + STEPS, WARM + 2 * STEPS) if split else ():
                timers.s.clear()
                t0 = time.perf_counter()
                runner.step(i)
                sync()
                total, parts = (time.perf_counter() - t0) * 1000, {k: v * 1000 for k, v in timers.s.items()}
                steps.append(parts | {"total": total, "fwd_bwd": total - sum(parts.values())})
        parts = {k: statistics.median(p.get(k, 0.0) for p in steps) for k in {k for p in steps for k in p}}
        return dict(ms=ms, tps=tokens_per_step / ms * 1000, peak=peak, parts=parts)
    finally:
        runner.close()
        del runner
        free_memory()


def print_step_table(rows: list[tuple[str, str, dict]]):
    print("\n| code | MIXER_HEAD | ms/step | tokens/s | peak GiB | split total | fwd+bwd | optimizer (Muon / Adam / EMA) "
          "| clip | data wait | oracle keys | expert_probs | speed-up (baseline ms / today ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = {head: r["ms"] for code, head, r in rows if code != "today"}
    for code, head, r in rows:
        p = defaultdict(float, r["parts"])
        opt = p["muon"] + p["adam"] + p["ema"]
        speed = f"{base[head] / r['ms']:.2f}x" if code == "today" and head in base else ""
        print(f"| {code} | {head} | {r['ms']:.1f} | {r['tps']:,.0f} | {r['peak']} | {p['total']:.1f} | "
              f"{p['fwd_bwd']:.1f} | {opt:.1f} ({p['muon']:.1f} / {p['adam']:.1f} / {p['ema']:.1f}) | {p['clip']:.1f} | "
              f"{p['data']:.1f} | {p['keys']:.1f} | {p['probs']:.1f} | {speed} |", flush=True)


def accum_sweep(env: dict):
    """ms/step for each GRAD_ACCUM_STEPS in BENCH_ACCUM (today's code, the configured MIXER_HEAD)."""
    head = tg.load_hyperparameters(env).mixer_head
    print(f"\nGRAD_ACCUM_STEPS sweep (today, MIXER_HEAD={head}, 1 process)")
    print("| GRAD_ACCUM_STEPS | micro-batch tokens | ms/step | tokens/s | peak GiB |\n|---|---|---|---|---|")
    best = None
    for accum in ACCUMS:
        try:
            a = tg.load_hyperparameters(env | {"GRAD_ACCUM_STEPS": str(accum)})
            tg.grad_accum_steps(a, 1)
        except tg.UserError as e:
            print(f"| {accum} | - | skipped: {str(e).split(';')[0]} | | |")
            continue
        try:
            r = measure(lambda t: Today(a, t), a.train_batch_tokens, split=False)
        except torch.cuda.OutOfMemoryError:
            r = None
        if r is None:  # outside the except block, so the traceback no longer holds the model's tensors
            free_memory()
            print(f"| {accum} | {a.train_batch_tokens // accum:,} | out of memory | | |", flush=True)
            continue
        print(f"| {accum} | {a.train_batch_tokens // accum:,} | {r['ms']:.1f} | {r['tps']:,.0f} | {r['peak']} |",
              flush=True)
        if best is None or r["ms"] < best[1]:
            best = (accum, r["ms"])
    if best:
        print(f"fastest that fits: GRAD_ACCUM_STEPS={best[0]} ({best[1]:.1f} ms/step)")


def sdpa_backends(a):
    """Forward+backward of one layer's attention at the training shape under each SDPA backend (CUDA only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    accum = tg.grad_accum_steps(a, 1)
    B, T, H, Hkv = a.train_batch_tokens // accum // a.train_seq_len, a.train_seq_len, a.num_heads, a.num_kv_heads
    D = a.model_dim // a.num_heads
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v = (torch.randn(B, h, T, D, device=DEVICE, dtype=torch.bfloat16, generator=gen).requires_grad_()
               for h in (H, Hkv, Hkv))
    gqa, per_step = Hkv != H, a.num_layers * accum
    print(f"\nattention forward+backward, q [{B}, {H}, {T}, {D}] k/v [{B}, {Hkv}, {T}, {D}] bf16 causal "
          f"(x{a.num_layers} layers x{accum} micro-steps per step); train_gpt uses "
          f"{'FlashAttention 3' if tg._fa3 is not None else 'SDPA with the default backend choice'}")
    print("| backend | ms per call | ms per step |\n|---|---|---|")
    candidates = [("default (no sdpa_kernel)", None)] + [(b.name, b) for b in (
        SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)]
    for name, backend in candidates:
        ctx = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        print(f"| {name} | {attention_ms(fn, ctx, per_step)} |", flush=True)
    if tg._fa3 is not None:
        qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        fn = lambda: (lambda o: o[0] if isinstance(o, tuple) else o)(tg._fa3(qt, kt, vt, causal=True))
        print(f"| FlashAttention 3 | {attention_ms(fn, contextlib.nullcontext(), per_step)} |")


def attention_ms(fn, ctx, per_step: int, reps: int = 10) -> str:
    try:
        with ctx:
            for i in range(3 + reps):
                if i == 3:
                    sync()
                    t0 = time.perf_counter()
                out = fn()
                out.backward(torch.ones_like(out))
            sync()
    except RuntimeError as e:  # the backend does not support this shape, dtype, GQA or GPU
        return f"unavailable: {str(e).splitlines()[0][:70]} |"
    ms = (time.perf_counter() - t0) * 1000 / reps
    return f"{ms:.3f} | {ms * per_step:.1f}"


HEADS = [("none", {"MIXER_HEAD": "none"}),  # the mixer off
         ("multi", {"MIXER_HEAD": "multi"}),  # the default gate: it learns at evaluation, so none of it trains here
         ("multi+oracle", {"MIXER_HEAD": "multi", "MIXER_LOSS_WEIGHT": "0.1"})]  # the seeds' gate, trained against
# the frozen oracle (its lookups and the mixture loss in every step)


def main():
    env = {k: v for k, v in os.environ.items() if k in tg.KNOB_BY_ENV}
    a = tg.load_hyperparameters(env)
    old = load_baseline(BASELINE) if BASELINE.lower() not in ("", "none") else None
    dev = torch.cuda.get_device_name() if CUDA else f"cpu ({torch.get_num_threads()} threads)"
    data = "random tokens" if isinstance(token_source(a), tg.RandomTokens) else a.data_path
    print(f"device:{dev} torch:{torch.__version__} layers:{a.num_layers} dim:{a.model_dim} "
          f"batch_tokens:{a.train_batch_tokens} seq:{a.train_seq_len} grad_accum:{tg.grad_accum_steps(a, 1)} "
          f"orders:2..{a.ngram_max_order} oracle_tokens:{ORACLE_TOKENS} data:{data} steps:{STEPS} "
          f"(after {WARM} warm-up) baseline:{BASELINE if old else 'none'}")
    print("ms per step, medians over steps; the split comes from a second pass synchronized around every part "
          "(its step time is 'split total'); fwd+bwd = split total - the other parts")
    rows = []
    for head, knobs in HEADS:
        a_head = tg.load_hyperparameters(env | knobs)
        rows.append(("today", head, measure(lambda t: Today(a_head, t), a.train_batch_tokens)))
        if old is not None:
            rows.append((f"baseline {BASELINE}", head,
                         measure(lambda t: Baseline(old, env | knobs, t), a.train_batch_tokens)))
    print_step_table(rows)
    if ACCUMS:
        accum_sweep(env)
    if CUDA:
        sdpa_backends(a)


if __name__ == "__main__":
    main()
