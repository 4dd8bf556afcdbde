"""Vocabulary shards (shard.py), model-free: a random head cut into tensor-parallel ranges, each
shard's FlashHead on its own rows only, against the whole head's FlashHead. (tests/test_vllm_tp.py
runs the same through real vLLM with two ranks.)"""
import pytest
import torch

from flashhead import ClusterIndex, FlashHead, FlashHeadConfig
from flashhead.core.config import FlashHeadError
from flashhead.core.index import fingerprint

V, D = 4000 - 7, 64          # a short last cluster, as in real vocabularies


def _index(stage1="mean", exact=(5, 3990)):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(V, D, generator=g) * 2
    # the first 1,600 ids in contiguous clusters (a script's tokens, as in real vocabularies: whole
    # clusters on one shard), the rest spread over the vocabulary
    order = torch.cat([torch.arange(1600), 1600 + torch.randperm(V - 1600, generator=g)])
    assign = torch.empty(V, dtype=torch.int64)
    assign[order] = torch.arange(V) // 16
    k = int(assign.max()) + 1
    cent = torch.zeros(k, D).index_add_(0, assign, w) / torch.bincount(assign, minlength=k)[:, None]
    cfg = FlashHeadConfig(probes=12, exact_tokens=list(exact), stage1=stage1)
    index = ClusterIndex(cfg, assign, cent, fingerprint(w))
    index.offsets = torch.randn(V, generator=g) * 0.1
    return w, index


def _shards(w, index, cuts, kernel, means=None):
    return [FlashHead(w[a:b], index, kernel=kernel, vocab_range=(a, b), check_fingerprint=False, means=means)
            for a, b in zip(cuts, cuts[1:])]


@pytest.mark.parametrize("kernel,dtype", [("torch", torch.float32), ("cpu", torch.float32),
                                          ("cpu", torch.bfloat16)])   # bf16: the native stage 2
@pytest.mark.parametrize("cuts", [[0, 2000, V], [0, 300, 3100, V]])
def test_shards_assemble_the_whole_heads_logits(kernel, dtype, cuts):
    w, index = _index()
    w = w.to(dtype)
    whole = FlashHead(w, index, kernel=kernel)
    shards = _shards(w, index, cuts, kernel)
    # a probed cluster often has no token at all on a shard: the trash slots carry it
    assert any(bool((s.slot_bias == float("-inf")).all(1).any()) for s in shards)
    h = torch.randn(6, D, generator=torch.Generator().manual_seed(5))
    ref = whole.flash_logits(h)
    tops = [s.shard_top(h) for s in shards]
    values = torch.stack([t[0] for t in tops])
    tokens = torch.stack([t[1] for t in tops])
    best = values.max(0).values.unsqueeze(1)                    # what vLLM's all-gather computes
    # greedy by (value, token) pairs = the whole head's greedy token
    assert torch.equal(tokens.gather(0, values.argmax(0, keepdim=True)).squeeze(0), whole.flash_greedy(h))
    assembled = torch.cat([s.shard_logits(h, lambda b: best) for s in shards], 1)
    # same rows, same ops; the always-exact tokens' product [N, d] @ [d, F] has F = 1 per shard here,
    # 2 whole: a different summation order (measured: 8 values off by <= 1.9e-6)
    torch.testing.assert_close(assembled, ref, rtol=0, atol=1e-5)
    # without the reduced cap a shard caps its estimates at its own (lower) best: estimates only drop
    local = torch.cat([s.shard_logits(h) for s in shards], 1)
    exact = torch.zeros_like(ref, dtype=torch.bool).scatter_(1, whole.probe(h)[1], True)
    torch.testing.assert_close(local[exact], ref[exact], rtol=0, atol=1e-5)
    assert bool((local <= ref + 1e-5).all())


def test_cosine_shards_need_the_whole_heads_means():
    w, index = _index(stage1="cosine")
    whole = FlashHead(w, index, kernel="torch")
    with pytest.raises(FlashHeadError, match="means"):
        _shards(w, index, [0, 2000, V], "torch")
    from flashhead.core.shard import member_sums

    parts = [member_sums(w[a:b], index.assignments[a:b], index.num_clusters) for a, b in [(0, 2000), (2000, V)]]
    means = (parts[0][0] + parts[1][0]) / (parts[0][1] + parts[1][1]).unsqueeze(1)
    shards = _shards(w, index, [0, 2000, V], "torch", means=means)
    h = torch.randn(3, D)
    best = torch.stack([s.shard_top(h)[0] for s in shards]).max(0).values.unsqueeze(1)
    assembled = torch.cat([s.shard_logits(h, lambda b: best) for s in shards], 1)
    torch.testing.assert_close(assembled, whole.flash_logits(h), rtol=0, atol=1e-5)  # means summed in another order


def test_a_shard_refuses_whole_vocabulary_calls():
    w, index = _index()
    shard = _shards(w, index, [0, 2000], "cpu")[0]
    with pytest.raises(FlashHeadError, match="shard"):
        shard(torch.randn(1, D))
    with pytest.raises(FlashHeadError, match="shard"):
        FlashHead(w, index).shard_logits(torch.randn(1, D))
    with pytest.raises(FlashHeadError, match="does not match"):
        FlashHead(w[:100], index, vocab_range=(0, 200), check_fingerprint=False)
