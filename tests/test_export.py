"""QUANTIZATION AND EXPORT: the roles table, row clips, GPTQ against rounding, the artifact round trip and the fit."""
import pytest
import torch

import train_gpt as tg
from conftest import tiny_model


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


def test_gptq_survives_a_hessian_that_is_not_positive_definite():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 32, generator=g)
    H = -torch.eye(32) * 5 + torch.randn(32, 32, generator=g)  # what a bf16-accumulated H can degrade to
    s = tg.row_scales(w, 6, 6.0)
    assert torch.equal(tg.quantize_matrix(w, s, 6, (H + H.T) / 2), tg.quantize_matrix(w, s, 6))  # falls back to rounding


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
