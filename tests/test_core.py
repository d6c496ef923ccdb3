"""train_gpt.py core: configuration errors, model, Muon, quantization/export."""
import ast
import io
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import torch

import train_gpt as tg
from conftest import ROOT


# ---- configuration ---------------------------------------------------------------------------------------------

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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the thread default is for CPU runs")
@pytest.mark.parametrize("omp, threads", [(None, 1), ("2", 2)])
def test_cpu_runs_one_thread_unless_omp_num_threads_says(tmp_path, omp, threads):
    """One thread per core oversubscribes a shared CPU (82 s instead of 28 s for PRESET=smoke on 2 busy cores)."""
    env = {k: v for k, v in os.environ.items() if k not in tg.KNOB_BY_ENV and k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, capture_output=True, text=True,
                          env=env | {"PRESET": "smoke", "TOKENIZER_PATH": "missing.model"} | (
                              {"OMP_NUM_THREADS": omp} if omp else {}), timeout=120)
    assert proc.returncode == 2 and "TOKENIZER_PATH='missing.model' does not exist" in proc.stderr
    assert f"device:cpu gpu:none cpu_threads:{threads}" in proc.stdout


def test_parsing_types_presets_and_overrides():
    a = tg.load_hyperparameters({"USE_THIS": "ignored", "TTT_PARAMS": "q", "NGRAM_ENT_CENTER": "2.6, 2.8,3.0,3.2,3.5,3.8",
                                 "PRESET": "smoke", "NUM_LAYERS": "3"})
    assert a.ttt_params == "q" and a.ngram_ent_center == [2.6, 2.8, 3.0, 3.2, 3.5, 3.8]
    assert a.num_layers == 3 and a.model_dim == 64  # explicit env beats the preset; the preset beats defaults
    d = tg.load_hyperparameters({})
    assert (d.num_layers, d.model_dim, d.num_heads, d.num_kv_heads, d.mlp_mult) == (11, 512, 8, 8, 3.5)
    assert (d.train_seq_len, d.train_batch_tokens, d.matrix_lr, d.max_wallclock_seconds) == (2048, 786432, 0.025, 600)


def test_grad_accum_must_divide_global_batch():
    a = tg.load_hyperparameters({"TRAIN_BATCH_TOKENS": str(786432)})
    assert tg.grad_accum_steps(a, 8) == 1 and tg.grad_accum_steps(a, 2) == 4 and tg.grad_accum_steps(a, 1) == 8
    with pytest.raises(tg.UserError, match="TRAIN_BATCH_TOKENS=786432 must be divisible by world size 5"):
        tg.grad_accum_steps(a, 5)


def test_help_lists_every_knob_and_matches_readme():
    proc = subprocess.run([sys.executable, str(ROOT / "train_gpt.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for env in tg.KNOB_BY_ENV:
        assert f"`{env}`" in proc.stdout
    readme = (ROOT / "README.md").read_text()
    assert tg.help_table() in readme, "README's configuration table is stale: paste python3 train_gpt.py --help"


PACKED_CODE_BUDGET = 45_000  # bytes of the packed script (what the artifact counts); 39,246 when it was set


def test_packed_code_stays_within_its_byte_budget():
    assert len(tg.pack_source((ROOT / "train_gpt.py").read_bytes())) < PACKED_CODE_BUDGET


@pytest.mark.parametrize("env, fragment", [
    ({"WARMDOWN_ITERS": "3500"}, "WARMDOWN_ITERS is no longer read; use WARMDOWN_FRAC"),
    ({"LATE_QAT_LRMUL": "0.15"}, "late QAT was removed"),
])
def test_retired_knobs_say_what_replaced_them(env, fragment):
    with pytest.raises(tg.UserError, match=fragment):
        tg.load_hyperparameters(env)


# ---- model -----------------------------------------------------------------------------------------------------

def tiny_model(**env) -> tg.GPT:
    a = tg.load_hyperparameters({"PRESET": "smoke"} | {k: str(v) for k, v in env.items()})
    torch.manual_seed(0)
    return tg.GPT(tg.ModelConfig.from_args(a))


def test_forward_backward_reaches_every_parameter():
    model = tiny_model(NUM_LAYERS=4, XSA_LAST_N=2, VE_LAST_N=2)
    x = torch.randint(0, 1024, (2, 32))
    logits, h = model(x)
    assert logits.shape == (2, 32, 1024) and h.shape == (2, 32, 64)
    assert logits.abs().max() <= 30.0  # softcap
    # zero-initialized projections block gradient to their inputs at step 0: perturb them first
    with torch.no_grad():
        for m in (m for m in model.modules() if isinstance(m, tg.CastedLinear)):
            m.weight.add_(torch.randn_like(m.weight) * 0.02)
        model.bigram_emb.weight.normal_(0, 0.02)
        model.mixer_gate.weight.normal_(0, 0.02)
    logits, h = model(x)
    (logits.logsumexp(-1).mean() + model.mixer_gate(h).square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_smear_and_bigram_never_cross_a_document_boundary():
    model = tiny_model()
    with torch.no_grad():
        model.smear_gate.fill_(2.0)
    a = torch.tensor([[5, 6, 7, 1, 9, 10]])
    b = torch.tensor([[8, 3, 4, 1, 9, 10]])  # a different previous document
    xa, xb = model.tok_emb(a), model.tok_emb(b)
    sa, sb = model.smear(xa, a), model.smear(xb, b)
    assert torch.equal(sa[0, 3:], sb[0, 3:])  # BOS and after: identical despite the different previous document
    assert torch.equal(model.bigram_ids(a)[0, 3:], model.bigram_ids(b)[0, 3:])
    assert not torch.equal(sa[0, 1], xa[0, 1])  # the gate does blend inside a document


def test_newton_schulz_gives_near_orthogonal_update():
    torch.manual_seed(0)
    u, _, v = torch.linalg.svd(torch.randn(64, 64))
    square = u @ torch.diag(torch.linspace(0.01, 1.0, 64)) @ v  # condition number 100
    for g in [torch.randn(64, 256), torch.randn(256, 64), square]:
        s = torch.linalg.svdvals(tg.newton_schulz_orthogonalize(g, 5))
        assert 0.5 < s.min() and s.max() < 1.3, (g.shape, s.min(), s.max())


def test_muon_step_has_singular_values_near_lr():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(32, 48))
    before = p.detach().clone()
    opt = tg.Muon([p], lr=0.1, momentum=0.0, weight_decay=0.0, ns_steps=5)
    p.grad = torch.randn(32, 48)
    opt.step()
    s = torch.linalg.svdvals(before - p.detach()) / 0.1
    assert 0.5 < s.min() and s.max() < 1.3


def test_batched_muon_equals_one_matrix_at_a_time():
    """Shapes batched together (and an odd count per shape) against the plain loop: momentum, Nesterov, one
    Newton-Schulz per matrix, the tall/wide scale, decoupled weight decay."""
    torch.manual_seed(0)
    shapes = [(32, 48), (48, 32), (32, 48), (64, 16), (32, 48), (48, 32)]
    params = [torch.nn.Parameter(torch.randn(*sh)) for sh in shapes]
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in ref]
    opt = tg.Muon(params, lr=0.05, momentum=0.9, weight_decay=0.1, ns_steps=5)
    for step in range(3):
        grads = [torch.randn(*sh) for sh in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, g in enumerate(grads):
            bufs[i] = bufs[i] * 0.9 + g
            u = tg.newton_schulz_orthogonalize(g + 0.9 * bufs[i], 5) * max(1.0, g.size(0) / g.size(1)) ** 0.5
            ref[i] = ref[i] * (1 - 0.05 * 0.1) - 0.05 * u
        for p, r in zip(params, ref):
            assert torch.allclose(p.detach(), r, atol=1e-5, rtol=0), step


def test_batch_loader_yields_the_batches_of_direct_calls():
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), print, "t")
    loader = tg.BatchLoader(tg.RandomTokens(1024, 3), 512, 64, rt)
    direct = tg.RandomTokens(1024, 3)
    for _ in range(6):
        for got, want in zip(loader.next(), tg.next_micro_batch(direct, 512, 64, 0, 1, torch.device("cpu"))):
            assert torch.equal(got, want)
    loader.close()
    assert not loader.thread.is_alive()


def test_only_linear_weights_go_to_muon():
    """Muon orthogonalizes whole matrices: a [2, dim] residual mix or the mixer gate must stay with Adam."""
    model = tiny_model()
    groups = tg.optimizer_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    matrix = sorted(names[id(p)] for p in groups["matrix"])
    assert matrix and all(n.endswith((".q.weight", ".k.weight", ".v.weight", "proj.weight", ".fc.weight"))
                          for n in matrix), matrix
    scalar = {names[id(p)] for p in groups["scalar"]}
    assert "blocks.0.resid_mix" in scalar and "mixer_gate.weight" in scalar
    assert {names[id(p)] for p in groups["table"]} >= {"tok_emb.weight"}
    assert sum(map(len, groups.values())) == len(names)


def test_ema_warms_up_in_short_runs():
    model = torch.nn.Linear(4, 4, bias=False)
    avg = tg.WeightAverager(model, 0.997)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(30):
        avg.update(model)
    ema, label = avg.candidates(model)["ema"]
    assert label.startswith("ema") and (ema["weight"] - 1.0).abs().max() < 0.05  # plain EMA(0.997) would be ~0.09


def reference_loss(model, x, y) -> float:
    """Float64 cross-entropy of the network's logits, from the plain forward and an explicit log-softmax."""
    with torch.no_grad():
        logits = model.logits(tg.GPT.hidden(model, x)).double().reshape(-1, model.c.vocab_size)
    return -logits.log_softmax(-1).gather(1, y.reshape(-1, 1)).mean().item()


@pytest.mark.parametrize("mode", ["auto", "ema", "raw"])
def test_final_weights_are_chosen_on_held_back_training_tokens(mode):
    """auto exports the candidate with the lowest loss on the stream's next tokens, which no step trained on (and
    forced modes export what they name); the choice and every candidate's loss go to the summary."""
    a = tg.load_hyperparameters({"PRESET": "smoke", "FINAL_WEIGHTS": mode, "FINAL_SELECT_TOKENS": "8192"})
    model = tiny_model()
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda *args, **kw: None, "t")
    avg = tg.WeightAverager(model, 0.9)
    avg.update(model)
    with torch.no_grad():  # the live weights drift after the EMA's last update: two candidates that really differ
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    stream = tg.RandomTokens(a.vocab_size, 5)
    held = tg.RandomTokens(a.vocab_size, 5)  # the same stream: what the choice reads from it
    batches = [tg.next_micro_batch(held, 4096, a.train_seq_len, 0, 1, torch.device("cpu"))[:2] for _ in range(2)]
    want, found = {}, avg.candidates(model)
    for name, (weights, _) in found.items():
        probe = tiny_model()
        probe.load_state_dict(weights)
        want[name] = sum(reference_loss(probe, x, y) for x, y in batches) / len(batches)
    choice = tg.choose_final_weights(model, avg, stream, a, rt)
    assert set(choice["held_back_loss"]) == {"raw", "ema"} and choice["tokens"] == 8192
    for name, loss in choice["held_back_loss"].items():
        assert loss == pytest.approx(want[name], abs=1e-4)
    assert want["raw"] != pytest.approx(want["ema"], abs=1e-3)
    assert choice["chosen"] == (min(want, key=want.get) if mode == "auto" else mode)
    exported = model.state_dict()
    assert all(torch.equal(exported[k], v.to(exported[k].dtype)) for k, v in found[choice["chosen"]][0].items())


def test_final_weights_that_cannot_exist_are_refused_at_start_up():
    with pytest.raises(tg.UserError, match="FINAL_WEIGHTS.*SWA_EVERY"):
        tg.load_hyperparameters({"FINAL_WEIGHTS": "swa", "SWA_EVERY": "0"})
    with pytest.raises(tg.UserError, match="FINAL_WEIGHTS.*EMA_DECAY"):
        tg.load_hyperparameters({"FINAL_WEIGHTS": "ema", "EMA_DECAY": "0"})


@pytest.mark.parametrize("budget_s, step_ms", [(20, 1000), (240, 1090), (600, 83)])
def test_schedule_starts_at_full_lr_and_ends_at_zero_at_any_budget(budget_s, step_ms):
    """A short one-GPU run and a 600 s 8-GPU run both train at full LR first and decay to 0 where the clock ends
    (the old WARMDOWN_ITERS=3500 put a 240 s run at 5% of its LR from step 1)."""
    a = tg.load_hyperparameters({"WARMDOWN_FRAC": "0.5", "MUON_MOMENTUM_WARMUP_FRAC": "0.2"})
    s = tg.Schedule(a, budget_s * 1000.0)
    steps = budget_s * 1000 // step_ms
    muls = [s.lr_mul(s.progress(k, k * step_ms)) for k in range(steps)]
    assert muls[0] == 1.0 and muls[steps // 3] == 1.0 and muls[-1] < 0.02 + 2 * step_ms / (budget_s * 1000)
    assert all(x >= y for x, y in zip(muls, muls[1:]))
    assert s.lr_mul(s.progress(steps, budget_s * 1000)) == 0.0
    assert s.muon_momentum(0.0) == a.muon_momentum_warmup_start and s.muon_momentum(0.2) == a.muon_momentum
    assert s.muon_momentum(0.1) == pytest.approx((a.muon_momentum_warmup_start + a.muon_momentum) / 2)


def test_schedule_by_steps_when_uncapped_and_whichever_ends_first():
    a = tg.load_hyperparameters({"WARMDOWN_FRAC": "0.1", "ITERATIONS": "100"})
    s = tg.Schedule(a, float("inf"))
    assert s.lr_mul(s.progress(90, 1e9)) == 1.0 and s.lr_mul(s.progress(95, 0)) == pytest.approx(0.5)
    capped = tg.Schedule(a, 1000.0)  # the wallclock runs out at step 10: progress follows it
    assert capped.progress(10, 1000.0) == 1.0 and capped.progress(50, 100.0) == 0.5


# ---- quantization and export -----------------------------------------------------------------------------------

def test_roles_table_decides_optimizer_groups_and_export():
    model = tiny_model(MLP_MULT=4)
    roles = tg.parameter_roles(model)
    assert set(roles) == {n for n, _ in model.named_parameters()}
    assert roles["blocks.0.mlp.fc.weight"] == "mlp" and roles["blocks.1.attn.q.weight"] == "attn"
    assert roles["tok_emb.weight"] == "embed" and roles["mixer_gate.weight"] == "scalar"
    a = tg.load_hyperparameters({"PRESET": "smoke", "QUANT_MLP_BITS": "5", "QUANT_CLIP_MLP": "7"})
    plan = tg.quantized_roles(roles, a)
    assert plan["blocks.0.mlp.proj.weight"] == (5, 7.0) and plan["blocks.0.attn.v.weight"][0] == 6
    assert "blocks.0.attn_scale" not in plan and "mixer_gate.weight" not in plan
    assert tg.quant_tag(a) == "int5-6"


def test_row_scales_put_the_clip_at_k_standard_deviations():
    torch.manual_seed(0)
    w = torch.randn(64, 512) * torch.linspace(0.01, 1, 64)[:, None]
    s = tg.row_scales(w, 6, 10.0)
    assert torch.allclose(s * 31, 10 * w.std(dim=1, correction=0), rtol=1e-3)
    codes = tg.quantize_matrix(w, s, 6)
    err = codes.float() * s[:, None] - w
    assert codes.abs().max() <= 31 and (err.abs() <= s[:, None] * 0.5001).all()  # 10 std: nothing clipped here


def h_error(w, codes, scale, H):
    d = (codes.double() * scale.double()[:, None] - w.double())
    return torch.einsum("ri,ij,rj->", d, H.double(), d).item()


@pytest.mark.parametrize("bits, k", [(6, 8.0), (5, 6.0), (4, 4.0)])
def test_gptq_beats_rounding_in_hessian_weighted_error(bits, k):
    """The quantity GPTQ minimizes, tr((W - Q) H (W - Q)^T), against round-to-nearest at the same scales, with a
    random positive-definite H with correlated inputs (as activations are)."""
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(96, 160, generator=g)
    x = torch.randn(4000, 160, generator=g) @ (torch.eye(160) + 0.3 * torch.randn(160, 160, generator=g))
    H = x.T @ x
    s = tg.row_scales(w, bits, k)
    rtn, gptq = tg.quantize_matrix(w, s, bits), tg.quantize_matrix(w, s, bits, H)
    assert gptq.abs().max() <= 2 ** (bits - 1) - 1
    assert h_error(w, gptq, s, H) < 0.8 * h_error(w, rtn, s, H)


def test_gptq_returns_a_matrix_on_the_grid_exactly_and_handles_dead_inputs():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-31, 32, (40, 300), generator=g).to(torch.int8)
    s = torch.rand(40, generator=g).half().float() + 0.01
    w = codes.float() * s[:, None]
    x = torch.randn(2000, 300, generator=g)
    x[:, 7] = 0  # a dead input: its column of H is zero
    got = tg.quantize_matrix(w, s, 6, x.T @ x)
    assert torch.equal(got[:, torch.arange(300) != 7], codes[:, torch.arange(300) != 7])
    assert (got[:, 7] == 0).all()


def trained_like_state(a, seed=0):
    torch.manual_seed(seed)
    model = tg.GPT(tg.ModelConfig.from_args(a))
    state = {k: v + 0.02 * torch.randn_like(v) for k, v in model.state_dict().items()}
    return model, state, tg.quantized_roles(tg.parameter_roles(model), a)


def test_export_round_trip_is_exact_and_corruption_is_refused():
    a = tg.load_hyperparameters({"PRESET": "smoke", "QUANT_MLP_BITS": "5", "BIGRAM_VOCAB_SIZE": "4096",
                                 "BIGRAM_DIM": "32"})
    model, state, plan = trained_like_state(a)
    qstate = tg.quantize_state(state, plan)
    bits = {k: v.get("bits", 0) for k, v in qstate.items()}
    assert bits["bigram_emb.weight"] == 8 and bits["tok_emb.weight"] == 8 and bits["blocks.0.attn_scale"] == 0
    assert bits["blocks.0.mlp.fc.weight"] == 5 and bits["blocks.0.attn.q.weight"] == 6
    blob = tg.serialize_artifact(qstate, model.c, {"EVAL_STRIDE": 32})
    cfg, restored, settings = tg.deserialize_artifact(blob, "test")
    assert cfg == model.c and settings == {"EVAL_STRIDE": 32}
    expected = tg.dequantize_state(qstate)
    assert restored.keys() == expected.keys()
    for k in expected:
        assert torch.equal(restored[k], expected[k]), k
    with pytest.raises(tg.UserError, match="not a readable train_gpt.py artifact"):
        tg.deserialize_artifact(blob[:100], "cut.ptz")
    for at in range(len(blob) // 2, len(blob), max(1, len(blob) // 40)):  # one flipped bit anywhere is refused
        bad = bytearray(blob)
        bad[at] ^= 4
        with pytest.raises(tg.UserError, match="not a readable train_gpt.py artifact"):
            tg.deserialize_artifact(bytes(bad), "flipped.ptz")


def test_fit_uses_the_tightest_clips_that_fit_and_never_exceeds_the_target():
    a0 = tg.load_hyperparameters({"PRESET": "smoke", "MODEL_DIM": "128", "QUANT_METHOD": "rtn"})
    model, state, plan = trained_like_state(a0)
    loose, _ = tg.fit_artifact(state, plan, None, model.c, a0, 1000, {})
    tight_target = 1000 + len(loose) - 30_000  # forces clips wider than QUANT_CLIP_*
    a = tg.load_hyperparameters({"PRESET": "smoke", "MODEL_DIM": "128", "QUANT_METHOD": "rtn",
                                 "ARTIFACT_TARGET_BYTES": str(tight_target)})
    blob, fit = tg.fit_artifact(state, plan, None, model.c, a, 1000, {})
    widen = fit["widen"]
    assert len(blob) + 1000 <= tight_target == fit["target"] and fit["bytes"] == len(blob) + 1000
    assert 1.0 < widen < tg.FIT_MAX_WIDEN and fit["method"] == "rtn"
    assert fit["k_mlp"] == pytest.approx(a.quant_clip_mlp * widen)
    tighter = tg.serialize_artifact(tg.quantize_state(state, plan, widen / 1.03), model.c, {})
    assert len(tighter) + 1000 > tight_target  # a clearly tighter clip would not have fit
    impossible = tg.load_hyperparameters({"PRESET": "smoke", "MODEL_DIM": "128", "QUANT_METHOD": "rtn",
                                          "ARTIFACT_TARGET_BYTES": "5000"})
    with pytest.raises(tg.ExportDoesNotFit, match="lower QUANT_BITS.*MODEL_DIM, MLP_MULT, NUM_KV_HEADS"):
        tg.fit_artifact(state, plan, None, model.c, impossible, 1000, {})


def test_start_up_stops_a_configuration_that_cannot_fit():
    a = tg.load_hyperparameters({"PRESET": "smoke", "ARTIFACT_TARGET_BYTES": "20000"})
    model = tg.GPT(tg.ModelConfig.from_args(a))
    lines = []
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda m, console=True: lines.append(m), "t")
    plan = tg.quantized_roles(tg.parameter_roles(model), a)
    with pytest.raises(tg.ExportDoesNotFit, match="ARTIFACT_TARGET_BYTES=20000"):
        tg.check_artifact_fits(model, plan, a, rt, 1000)
    a = tg.load_hyperparameters({"PRESET": "smoke"})
    tg.check_artifact_fits(model, plan, a, rt, 1000)
    assert lines[-1].startswith("artifact_projection tightest:")


def test_packed_source_round_trips_and_is_smaller():
    src = (ROOT / "train_gpt.py").read_bytes()
    packed = tg.pack_source(src)
    assert packed.startswith(tg.PACKED_MARKER) and len(packed) < len(src) // 3
    runnable = tg.unpack_source(packed)  # the same program without comments and docstrings
    assert runnable == tg.runnable_source(src) and tg.unpack_source(src) == src
    assert not [t for t in tokenize.tokenize(io.BytesIO(runnable).readline) if t.type == tokenize.COMMENT]
    assert ast.get_docstring(ast.parse(runnable)) == tg.__doc__  # --help prints it
    assert tg.prefill_ngram_cache.__doc__.encode()[:40] not in runnable  # function docstrings are dropped
    assert tg.hashlib.sha256(src).hexdigest().encode() in packed
    assert tg.pack_source(bytes(src)) == packed  # deterministic


def test_nan_loss_stops_with_a_clear_message(sample_data):
    a = tg.load_hyperparameters({"PRESET": "smoke", "MIXER_HEAD": "none"})
    model = tg.GPT(tg.ModelConfig.from_args(a))
    with torch.no_grad():
        model.tok_emb.weight.fill_(float("nan"))
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda m, console=True: None, "t")
    tr = tg.Trainer(model, tg.build_optimizers(model, a), tg.MixerConfig.from_args(a), a, rt, 1)
    with pytest.raises(tg.TrainingDiverged, match="train_loss is nan at step 1; lower MATRIX_LR"):
        tg.train(tr, None, tg.quantized_roles(tg.parameter_roles(model), a))


def test_gptq_survives_a_hessian_that_is_not_positive_definite():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 32, generator=g)
    H = -torch.eye(32) * 5 + torch.randn(32, 32, generator=g)  # what a bf16-accumulated H can degrade to
    s = tg.row_scales(w, 6, 6.0)
    assert torch.equal(tg.quantize_matrix(w, s, 6, (H + H.T) / 2), tg.quantize_matrix(w, s, 6))  # falls back to rounding


def test_batch_loader_raises_the_reader_error_where_the_loop_waits():
    class Broken(tg.RandomTokens):
        def take(self, n):
            raise tg.UserError("shard 7: token id 5000 >= VOCAB_SIZE=1024")
    loader = tg.BatchLoader(Broken(1024, 0), 512, 64, tg.Runtime(0, 1, 0, torch.device("cpu"), print, "t"))
    with pytest.raises(tg.UserError, match="shard 7"):
        loader.next()


def test_tilt_with_a_training_oracle_keeps_hints_off_the_frozen_table():
    a = tg.load_hyperparameters({"PRESET": "smoke", "MIXER_HEAD": "tilt", "COMPLEMENT_ALPHA": "0.5"})
    assert tg.MixerConfig.from_args(a).needs_oracle and tg.new_cache(a, "cpu", frozen=True).best is None
    assert tg.new_cache(a, "cpu").best is not None


def test_tilt_with_a_training_oracle_evaluates_from_a_train_prefill(sample_data):
    """The frozen oracle has no hint table: NGRAM_EVAL_PREFILL=train once cloned it and died in hint() (TypeError)."""
    a = tg.load_hyperparameters({"PRESET": "smoke", "MIXER_HEAD": "tilt", "COMPLEMENT_ALPHA": "0.5",
                                 "NGRAM_EVAL_PREFILL": "train", "NGRAM_PREFILL_TOKENS": "20000"})
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda msg, console=True: None, "t")
    oracle = tg.new_cache(a, rt.device, frozen=True)
    tg.prefill_ngram_cache(oracle, tg.list_shards(a.data_path, "train"), a.ngram_prefill_tokens, a.vocab_size, rt)
    cache = tg.build_eval_cache(a, rt, oracle)
    toks = torch.from_numpy(tg.read_shard(tg.list_shards(a.data_path, "train")[0])[:200].astype("int64"))
    hints = cache.hint(tg.target_keys(cache, toks, torch.arange(50, 200), toks[50:200]), a.ngram_tilt_confidence)
    assert (hints >= 0).any()
