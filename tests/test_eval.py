"""EVALUATION: score-first chunked evaluation: coverage, legality (score before update/TTT), TTT and gate scope,
the audit, the full-split projection."""
import time

import pytest
import torch

import train_gpt as tg

V = 1024


def make_evaluator(env: dict, n_tokens: int = 3000, seed: int = 0) -> tuple[tg.Evaluator, object]:
    a = tg.load_hyperparameters({"PRESET": "smoke", "TRAIN_SEQ_LEN": "64"} | env)
    torch.manual_seed(seed)
    model = tg.GPT(tg.ModelConfig.from_args(a))
    with torch.no_grad():  # a non-trivial network and gate, as after training
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    gen = torch.Generator().manual_seed(seed)
    motif = torch.randint(0, 40, (25,), generator=gen)
    tokens = torch.cat([motif if i % 3 else torch.randint(0, V, (25,), generator=gen) for i in range(n_tokens // 25)])
    tables = tg.ByteTables(torch.ones(V, dtype=torch.long), torch.zeros(V, dtype=torch.bool),
                           torch.zeros(V, dtype=torch.bool))
    ev = tg.Evaluator(model, tg.MixerConfig.from_args(a), tables, tokens, a.train_seq_len, 8, 0, 1, lambda m: None)
    return ev, a


def run_score_first(ev, a, record=True):
    cache = tg.new_cache(a, "cpu") if tg.MixerConfig.from_args(a).uses_cache else None
    ev.record = [] if record else None  # wired as evaluate_artifact wires it
    res = tg.evaluate(ev, "legal_ttt", a.eval_stride, a.eval_chunk_tokens, cache, tg.score_first_ttt(ev, a),
                      gate_step=tg.score_first_gate(ev))
    per_pos = torch.full((ev.tokens.numel(),), float("nan"), dtype=torch.float64)
    for idx, nll in ev.record or []:
        per_pos[idx] = nll.double()
    return res, per_pos


@pytest.mark.parametrize("t0, t1, seq_len, stride", [(1, 1000, 64, 16), (1, 1000, 64, 64), (300, 777, 128, 50)])
def test_windows_score_every_target_once_with_enough_context(t0, t1, seq_len, stride):
    seen = []
    for c, a, b in tg.score_windows(t0, t1, seq_len, stride):
        assert 0 <= c and b - 1 - c <= seq_len and b - a <= stride
        assert a - 1 - c >= min(seq_len - stride, a - 1)  # context before the first scored target
        seen += range(a, b)
    assert seen == list(range(t0, t1))


def test_every_target_is_scored_exactly_once_and_counted():
    ev, a = make_evaluator({"EVAL_STRIDE": "16", "EVAL_CHUNK_TOKENS": "500", "TTT_EPOCHS": "0"})
    res, per_pos = run_score_first(ev, a)
    assert torch.isnan(per_pos[0]) and not torch.isnan(per_pos[1:]).any()
    assert sum(c[2] for c in res.chunks) == ev.tokens.numel() - 1
    assert res.val_loss == pytest.approx(per_pos[1:].mean().item(), rel=1e-9)


@pytest.mark.parametrize("head, online", [("multi", "0"), ("multi", "0.1"), ("entropy", "0"), ("tilt", "0")])
def test_score_first_perturbing_the_future_changes_no_earlier_loss(head, online):
    """C1/C3: losses at or before p must not depend on tokens after p, across chunk boundaries, with the n-gram
    cache, TTT and the gate's online training on (large LRs so that any leak would show)."""
    env = {"MIXER_HEAD": head, "EVAL_STRIDE": "16", "EVAL_CHUNK_TOKENS": "400", "TTT_EPOCHS": "2", "TTT_LR": "0.05",
           "NGRAM_MIN_COUNT": "1", "MIXER_ONLINE_LR": online}
    ev, a = make_evaluator(env)
    _, base = run_score_first(ev, a)
    for p in (399, 400, 401, 650, 1200):  # chunk boundaries are at targets 401, 801, ...
        ev2, _ = make_evaluator(env)
        gen = torch.Generator().manual_seed(p)
        ev2.tokens[p + 1:] = torch.randint(0, V, (ev2.tokens.numel() - p - 1,), generator=gen)
        _, pert = run_score_first(ev2, a)
        assert torch.equal(pert[1:p + 1], base[1:p + 1]), f"a loss at or before {p} changed"
        assert not torch.equal(pert[p + 1:], base[p + 1:])


def test_the_cache_and_ttt_actually_help_on_repetitive_text():
    ev, a = make_evaluator({"MIXER_HEAD": "none", "TTT_EPOCHS": "0", "EVAL_CHUNK_TOKENS": "400"})
    plain, _ = run_score_first(ev, a, record=False)
    ev, a = make_evaluator({"MIXER_HEAD": "entropy", "TTT_EPOCHS": "0", "EVAL_CHUNK_TOKENS": "400",
                            "NGRAM_MIN_COUNT": "1"})
    mixed, _ = run_score_first(ev, a, record=False)
    ev, a = make_evaluator({"MIXER_HEAD": "none", "TTT_EPOCHS": "1", "TTT_LR": "0.05", "EVAL_CHUNK_TOKENS": "400"})
    adapted, _ = run_score_first(ev, a, record=False)
    assert mixed.val_loss < plain.val_loss - 0.5
    assert adapted.val_loss < plain.val_loss


def test_ttt_trains_only_on_scored_chunks_in_order(monkeypatch):
    ev, a = make_evaluator({"EVAL_CHUNK_TOKENS": "700", "TTT_EPOCHS": "1"})
    events = []
    real_score = tg.score_chunk
    monkeypatch.setattr(tg, "score_chunk", lambda ev, cache, t0, t1, stride: events.append(("score", t0, t1))
                        or real_score(ev, cache, t0, t1, stride))
    tg.evaluate(ev, "x", 16, 700, None, lambda t0, t1: events.append(("ttt", t0, t1)))
    n = ev.tokens.numel() - 1
    bounds = [(t, min(t + 700, n + 1)) for t in range(1, n + 1, 700)]
    expected = [e for t0, t1 in bounds for e in [("score", t0, t1), ("ttt", t0, t1)]][:-1]  # no TTT after the last
    assert events == expected


def test_gate_learns_from_each_scored_chunk_in_order(monkeypatch):
    """The online step follows each chunk's scoring (none after the last), trains on that chunk's kept rows only
    (positions with a valid order, at most the chunk's targets) and lowers their mixture loss."""
    ev, a = make_evaluator({"EVAL_CHUNK_TOKENS": "700", "TTT_EPOCHS": "0", "MIXER_ONLINE_LR": "0.05",
                            "NGRAM_MIN_COUNT": "1"})
    events, real_score, real_gate = [], tg.score_chunk, tg.gate_on_chunk

    def chunk_loss(rows):
        with torch.no_grad():
            x, p, valid, lp, entropy = (torch.cat([r[i] for r in rows], dim=1 if i in (1, 2) else 0) for i in range(5))
            return -tg.mixture_log_prob(tg.mixture_log_weights(ev.mixer, ev.model.mixer_gate(x), valid, entropy),
                                        lp, p).mean().item()

    def gate_spy(ev, opt):
        rows = list(ev.gate_rows)
        before = chunk_loss(rows)
        real_gate(ev, opt)
        events.append(("gate", sum(r[3].numel() for r in rows), before, chunk_loss(rows)))
    monkeypatch.setattr(tg, "score_chunk", lambda ev, cache, t0, t1, stride: events.append(("score", t0, t1))
                        or real_score(ev, cache, t0, t1, stride))
    monkeypatch.setattr(tg, "gate_on_chunk", gate_spy)
    tg.evaluate(ev, "x", 16, 700, tg.new_cache(a, "cpu"), gate_step=tg.score_first_gate(ev))
    n = ev.tokens.numel() - 1
    bounds = [(t, min(t + 700, n + 1)) for t in range(1, n + 1, 700)]
    assert [e[0] for e in events] == ["score", "gate"] * (len(bounds) - 1) + ["score"]
    for (_, t0, t1), (_, rows, before, after) in zip(events[::2], events[1::2]):
        assert rows <= t1 - t0
        assert (rows == 0) == (t0 == 1), "the first chunk meets an empty cache: no valid order, nothing to learn"
        assert rows == 0 or after < before


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("params, freeze", [("all", 1), ("q", 0)])
def test_ttt_changes_only_what_it_should(optimizer, params, freeze):
    ev, a = make_evaluator({"TTT_OPTIMIZER": optimizer, "TTT_PARAMS": params, "TTT_FREEZE_BLOCKS": str(freeze),
                            "TTT_LR": "0.01", "NUM_LAYERS": "2"})
    before = {k: v.clone() for k, v in ev.model.state_dict().items()}
    tg.score_first_ttt(ev, a)(1, 600)
    changed = {k for k, v in ev.model.state_dict().items() if not torch.equal(v, before[k])}
    if params == "q":
        assert changed == {"blocks.0.attn.q.weight", "blocks.1.attn.q.weight"}
    else:
        assert not any(k.startswith("blocks.0.") for k in changed)  # frozen block
        assert {"blocks.1.attn.q.weight", "blocks.1.mlp.fc.weight", "tok_emb.weight"} <= changed


@pytest.mark.parametrize("head", ["entropy", "multi", "tilt"])
def test_audit_passes_for_normalized_and_exposes_hashed_target(head):
    for scoring, expect_ok in [("normalized", True)] + ([("hashed_target", False)] if head != "tilt" else []):
        ev, a = make_evaluator({"NGRAM_SCORING": scoring, "NGRAM_BUCKETS": "256", "NGRAM_MIN_COUNT": "1",
                                "TTT_EPOCHS": "0", "MIXER_HEAD": head}, n_tokens=1500)
        res = tg.evaluate(ev, "t", 32, 500, tg.new_cache(a, "cpu"), audit=[3, 40, 700, 701, 1200, 1490])
        fields = dict(tok.split(":", 1) for tok in res.audit.split()[1:])
        assert fields["positions"] == "6" and fields["target_independent"] == "yes"
        assert (float(fields["max_abs_sum_err"]) <= 1e-5) == expect_ok, res.audit


def test_audit_enumerates_the_distribution_that_scored_each_target(monkeypatch):
    """With TTT changing the weights and the cache growing between chunks, the audited distribution at a position,
    read at the real target, is the probability that position was scored with."""
    ev, a = make_evaluator({"TTT_EPOCHS": "1", "TTT_LR": "0.01", "EVAL_CHUNK_TOKENS": "400", "EVAL_STRIDE": "24"})
    audited, real = {}, tg.mixed_nll

    def spy(m, logits, gate_h, cache, tokens, idx, targets, *rest):
        nll, log_w = real(m, logits, gate_h, cache, tokens, idx, targets, *rest)
        if targets.numel() == a.vocab_size and torch.equal(targets, torch.arange(a.vocab_size)):
            j = int(idx[0])
            audited[j] = nll[tokens[j]].item()
        return nll, log_w
    monkeypatch.setattr(tg, "mixed_nll", spy)
    ev.record, positions = [], [5, 399, 401, 850, 1203, 2990]
    res = tg.evaluate(ev, "t", a.eval_stride, a.eval_chunk_tokens, tg.new_cache(a, "cpu"), tg.score_first_ttt(ev, a),
                      audit=positions)
    scored = {int(i): float(n) for idx, nll in ev.record for i, n in zip(idx, nll)}
    assert sorted(audited) == positions and "target_independent:yes" in res.audit
    for j in positions:
        assert audited[j] == pytest.approx(scored[j], rel=1e-5, abs=1e-6), j

def test_full_split_projection_scales_work_not_the_fixed_audit(monkeypatch):
    """The audit enumerates NGRAM_AUDIT_POSITIONS positions whatever the split's size: its seconds are added once, not
    scaled to 62M targets (on an H200 that mistake projected 2,423 s for a ~200 s pass)."""
    scale = tg.FINEWEB_VAL_TARGETS / 1000
    assert tg.full_split_projection(10.0, 0.0, 0.0, 1, 1000) == pytest.approx(10.0 / 8 * scale)
    assert tg.full_split_projection(10.0, 2.0, 0.0, 1, 1000) == pytest.approx((8.0 / 8 + 2.0) * scale)
    assert tg.full_split_projection(10.0, 2.0, 4.0, 1, 1000) == pytest.approx((4.0 / 8 + 2.0) * scale + 4.0)
    seen, real, real_audit = {}, tg.full_split_projection, tg.audit_windows

    def slow_audit(*args):
        time.sleep(0.05)
        return real_audit(*args)
    monkeypatch.setattr(tg, "audit_windows", slow_audit)
    monkeypatch.setattr(tg, "full_split_projection", lambda *args: seen.setdefault("args", args) and real(*args))
    ev, a = make_evaluator({"TTT_EPOCHS": "0", "EVAL_CHUNK_TOKENS": "1000"})
    tg.evaluate(ev, "t", a.eval_stride, a.eval_chunk_tokens, tg.new_cache(a, "cpu"), audit=[5, 1500, 2500])
    seconds, serial_s, audit_s, _, _ = seen["args"]
    assert 0.15 <= audit_s < seconds and 0 < serial_s < seconds - audit_s


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
