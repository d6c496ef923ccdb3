"""TRAINING: the batch loader, the schedule, the final-weights choice, a diverging run."""
import pytest
import torch

import train_gpt as tg
from conftest import tiny_model


def test_batch_loader_yields_the_batches_of_direct_calls():
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), print, "t")
    loader = tg.BatchLoader(tg.RandomTokens(1024, 3), 512, 64, rt)
    direct = tg.RandomTokens(1024, 3)
    for _ in range(6):
        for got, want in zip(loader.next(), tg.next_micro_batch(direct, 512, 64, 0, 1, torch.device("cpu"))):
            assert torch.equal(got, want)
    loader.close()
    assert not loader.thread.is_alive()


def test_batch_loader_raises_the_reader_error_where_the_loop_waits():
    class Broken(tg.RandomTokens):
        def take(self, n):
            raise tg.UserError("shard 7: token id 5000 >= VOCAB_SIZE=1024")
    loader = tg.BatchLoader(Broken(1024, 0), 512, 64, tg.Runtime(0, 1, 0, torch.device("cpu"), print, "t"))
    with pytest.raises(tg.UserError, match="shard 7"):
        loader.next()


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


def reference_loss(model, x, y) -> float:
    """Float64 cross-entropy of the network's logits, from the plain forward and an explicit log-softmax."""
    with torch.no_grad():
        logits = model.logits(tg.GPT.hidden(model, x)).double().reshape(-1, model.c.vocab_size)
    return -logits.log_softmax(-1).gather(1, y.reshape(-1, 1)).mean().item()


@pytest.mark.parametrize("mode", ["auto", "ema", "raw", "swa"])
def test_final_weights_are_chosen_on_held_back_training_tokens(mode):
    """auto exports the candidate with the lowest loss on the stream's next tokens, which no step trained on (and
    forced modes export what they name; swa without snapshots falls back to the loss, says so and is logged as
    chosen by it); the choice and every candidate's loss go to the summary."""
    a = tg.load_hyperparameters({"PRESET": "smoke", "FINAL_WEIGHTS": mode, "FINAL_SELECT_TOKENS": "8192"})
    model = tiny_model()
    logged = []
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda msg, **kw: logged.append(msg), "t")
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
    forced = mode in ("ema", "raw")
    assert choice["chosen"] == (mode if forced else min(want, key=want.get)) and choice["unseen"]
    assert choice["by"] == ("FINAL_WEIGHTS" if forced else "held_back_loss")
    assert any(m.startswith("WARNING: FINAL_WEIGHTS=swa but the run made no such weights") for m in logged) == (
        mode == "swa")
    exported = model.state_dict()
    assert all(torch.equal(exported[k], v.to(exported[k].dtype)) for k, v in found[choice["chosen"]][0].items())


def test_final_weights_say_when_the_held_back_tokens_were_trained_on():
    """A stream that wrapped (more training tokens read than the shards hold) has no unseen tokens left: the choice
    still runs, but warns and the summary says so."""
    a = tg.load_hyperparameters({"PRESET": "smoke", "FINAL_SELECT_TOKENS": "8192"})
    model, logged = tiny_model(), []
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda msg, **kw: logged.append(msg), "t")
    avg = tg.WeightAverager(model, 0.9)
    stream = tg.RandomTokens(a.vocab_size, 5)
    stream.total = 12_000  # the loop read nothing, but the 8,192 held-back tokens plus their +1 targets fit
    assert tg.choose_final_weights(model, avg, stream, a, rt)["unseen"]
    stream.taken = 4_000  # as if the loop had read 4,000 tokens first: the held-back ones wrap into them
    assert not tg.choose_final_weights(model, avg, stream, a, rt)["unseen"]
    assert any(m.startswith("WARNING: the training stream wrapped") for m in logged)


def test_nan_loss_stops_with_a_clear_message(sample_data):
    a = tg.load_hyperparameters({"PRESET": "smoke", "MIXER_HEAD": "none"})
    model = tg.GPT(tg.ModelConfig.from_args(a))
    with torch.no_grad():
        model.tok_emb.weight.fill_(float("nan"))
    rt = tg.Runtime(0, 1, 0, torch.device("cpu"), lambda m, console=True: None, "t")
    tr = tg.Trainer(model, tg.build_optimizers(model, a), tg.MixerConfig.from_args(a), a, rt, 1)
    with pytest.raises(tg.TrainingDiverged, match="train_loss is nan at step 1; lower MATRIX_LR"):
        tg.train(tr, None, tg.quantized_roles(tg.parameter_roles(model), a))
