"""OPTIMIZER: Muon against the one-matrix-at-a-time reference, parameter groups, the EMA."""
import torch

import train_gpt as tg
from conftest import tiny_model


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
