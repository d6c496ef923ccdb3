"""train_gpt.py core: configuration errors, model, Muon, quantization/export."""
import subprocess
import sys
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
])
def test_bad_config_is_one_line_error(env, fragment):
    with pytest.raises(tg.UserError, match=fragment.replace("?", r"\?").replace("(", r"\(")):
        tg.load_hyperparameters(env)


def test_bad_config_exits_2_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "NGRAM_MAX_ORDRE": "9", "DATA_PATH": "/nonexistent"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: config error: unknown variable NGRAM_MAX_ORDRE='9'; did you mean NGRAM_MAX_ORDER?"]
    assert not (tmp_path / "logs").exists()  # stopped before creating a log, touching data or building a model


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


def test_file_stays_within_line_budget():
    assert (ROOT / "train_gpt.py").read_text().count("\n") < 2000


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
        for m in model.matrices():
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
    ema, kind = avg.final(model)
    assert kind.startswith("ema") and (ema["weight"] - 1.0).abs().max() < 0.05  # plain EMA(0.997) would be ~0.09


def test_lr_multiplier_warmdown_by_wallclock_and_steps():
    a = tg.load_hyperparameters({"WARMDOWN_ITERS": "100", "MAX_WALLCLOCK_SECONDS": "100"})
    assert tg.lr_multiplier(a, 100, 10_000, 100_000) == 1.0  # 100 ms/step: warmdown is the last 10 s
    assert tg.lr_multiplier(a, 950, 95_000, 100_000) == pytest.approx(0.5, rel=1e-6)
    assert tg.lr_multiplier(a, 1000, 100_000, 100_000) == 0.0  # reaches 0 where the loop stops (cap - reserve)
    assert tg.lr_multiplier(a, 0, 0, 100_000) == 1.0
    b = tg.load_hyperparameters({"WARMDOWN_ITERS": "10", "MAX_WALLCLOCK_SECONDS": "0", "ITERATIONS": "100"})
    assert tg.lr_multiplier(b, 95, 0, 0) == pytest.approx(0.5) and tg.lr_multiplier(b, 50, 0, 0) == 1.0


# ---- quantization and export -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits, max_rel_rms", [(8, 0.01), (6, 0.04), (5, 0.075)])
def test_quantization_error_is_bounded_per_bit_width(bits, max_rel_rms):
    torch.manual_seed(0)
    w = torch.randn(256, 512) * 0.05
    q, s = tg.quantize_rows(w, bits)
    assert q.dtype == torch.int8 and q.abs().max() <= 2 ** (bits - 1) - 1
    err = q.float() * s.float()[:, None] - w
    assert (err.square().mean().sqrt() / w.square().mean().sqrt()) < max_rel_rms
    unclipped = w.abs() <= (2 ** (bits - 1) - 1) * s.float()[:, None]
    assert (err.abs() <= s.float()[:, None] * 0.5001)[unclipped].all()  # rounding error only, where not clipped


def test_clip_search_beats_plain_max_scaling():
    torch.manual_seed(0)
    w = torch.randn(64, 1024)
    w[:, 0] = 8.0  # one outlier per row
    q, s = tg.quantize_rows(w, 5)
    err = (q.float() * s.float()[:, None] - w).square().sum()
    plain = w.abs().amax(1, keepdim=True) / 15
    err_plain = ((w / plain).round().clamp(-15, 15) * plain - w).square().sum()
    assert err < err_plain


def test_export_round_trip_is_exact():
    a = tg.load_hyperparameters({"PRESET": "smoke", "QUANT_MLP_BITS": "5", "BIGRAM_VOCAB_SIZE": "4096",
                                 "BIGRAM_DIM": "32"})
    torch.manual_seed(0)
    model = tg.GPT(tg.ModelConfig.from_args(a))
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    qstate = tg.quantize_state(state, a)
    bits = {k: v.get("bits", 0) for k, v in qstate.items()}
    assert bits["bigram_emb.weight"] == 8 and bits["tok_emb.weight"] == 8 and bits["blocks.0.attn_scale"] == 0
    blob = tg.serialize_artifact(qstate, model.c, level=3)
    cfg, restored = tg.deserialize_artifact(blob, "test")
    assert cfg == model.c
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


def test_nan_loss_stops_with_a_clear_message(sample_data):
    a = tg.load_hyperparameters({"PRESET": "smoke", "MIXER_HEAD": "none"})
    model = tg.GPT(tg.ModelConfig.from_args(a))
    with torch.no_grad():
        model.tok_emb.weight.fill_(float("nan"))
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda m: None, "t")
    with pytest.raises(tg.TrainingDiverged, match="train_loss is nan at step 1; lower MATRIX_LR"):
        tg.train(model, a, rt, None, tg.MixerConfig.from_args(a), 1)


def test_start_up_projects_the_artifact_and_warns_past_the_limit(sample_data, monkeypatch):
    a = tg.load_hyperparameters({"PRESET": "smoke", "WARMUP_STEPS": "1"})
    model = tg.GPT(tg.ModelConfig.from_args(a))
    lines = []
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lines.append, "t")
    mixer = tg.MixerConfig.from_args(a)
    tg.warm_up_and_time_export(model, tg.build_optimizers(model, a), a, rt, 1, mixer)
    projected = int(next(l for l in lines if l.startswith("artifact_projection:")).split(":")[1].split()[0])
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items()}  # same shapes, other gaussian draws
    actual = len(tg.serialize_artifact(tg.quantize_state(state, a), model.c, a.zstd_level)) + len(
        Path(tg.__file__).read_bytes())
    assert abs(projected - actual) < 0.01 * actual and not any(l.startswith("warning") for l in lines)
    monkeypatch.setattr(tg, "LIMIT_ARTIFACT_BYTES", projected - 1)
    lines.clear()
    tg.warm_up_and_time_export(model, tg.build_optimizers(model, a), a, rt, 1, mixer)
    assert any(l.startswith("warning: the projected artifact exceeds") for l in lines)
