"""The frozen training oracle: prefill counts against a dict reference, and leave-one-out at training positions."""
import collections

import numpy as np
import pytest
import torch

import train_gpt as tg

V, MAX_ORDER = 64, 4


def reference_counts(tokens: list[int]):
    pair, ctx = collections.Counter(), collections.Counter()
    for i in range(1, len(tokens)):
        for k in range(2, MAX_ORDER + 1):
            if i - (k - 1) >= 0:
                c = tuple(tokens[i - k + 1:i])
                pair[(k, c, tokens[i])] += 1
                ctx[(k, c)] += 1
    return pair, ctx


@pytest.mark.parametrize("frozen", [True, False], ids=["sorted", "hashed"])
@pytest.mark.parametrize("prefill_tokens, skip", [
    (0, 37),  # start mid-stream, as a later training step does; the batch crosses the seam between the shards
    (300, 37),  # the batch straddles the counted prefix
    (0, 3000 - 100),  # the batch wraps around into the next epoch: its first contexts reach into the last shard
])
def test_leave_one_out_matches_reference(tmp_path, prefill_tokens, skip, frozen):
    gen = np.random.default_rng(0)
    motif = gen.integers(0, V, 12)
    tokens = np.concatenate([motif if gen.random() < 0.6 else gen.integers(0, V, 12) for _ in range(250)])
    tg.write_shard(tmp_path / "fineweb_train_000000.bin", tokens[:200])
    tg.write_shard(tmp_path / "fineweb_train_000001.bin", tokens[200:])
    files = tg.list_shards(str(tmp_path), "train")
    cache = tg.make_cache(MAX_ORDER, 1 << 14, V, "normalized", 2, "cpu", frozen=frozen)
    counted_tokens = tg.prefill_ngram_cache(cache, files, prefill_tokens, V, tg.Runtime(0, 1, 0, torch.device("cpu"), print, "t"),
                                            block_tokens=70)
    assert counted_tokens == (prefill_tokens or tokens.size)
    pair, ctx = reference_counts(tokens[:counted_tokens].tolist())
    stream = tg.TokenStream(files, V)
    stream.take(skip)
    x, y, where = tg.next_micro_batch(stream, 64 * 8, 64, 0, 1, torch.device("cpu"))
    counted = tg.counted_pairs(cache, where, counted_tokens)
    p, valid = cache.expert_probs(cache.keys(x, y), counted)
    p, valid = p.view(MAX_ORDER - 1, -1), valid.view(MAX_ORDER - 1, -1)
    stream_tokens, size = tokens.tolist(), tokens.size
    checked = 0
    for j, pos in enumerate(where.tolist()):
        row_t = j % 64
        for o, k in enumerate(range(2, MAX_ORDER + 1)):
            if row_t < k - 2:  # the context would reach before this sequence's start
                assert not valid[o, j]
                continue
            c = tuple(stream_tokens[(pos - k + 1 + i) % size] for i in range(k - 1))  # the stream is cyclic
            n, total = pair[(k, c, stream_tokens[pos])], ctx[(k, c)]
            if pos < counted_tokens and pos >= k - 1:  # reference_counts counted this very occurrence: leave it out
                assert n > 0
                n, total = n - 1, total - 1
            assert bool(valid[o, j]) == (total >= 2), (pos, k)
            if total >= 2:
                assert p[o, j].item() == pytest.approx(n / total, abs=1e-6)
                checked += 1
    assert checked > 100
