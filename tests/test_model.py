"""MODEL: every parameter learns, and no token mixing crosses a document boundary."""
import torch

import train_gpt as tg
from conftest import tiny_model


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
