"""FlashHead against the exact dense head on synthetic heads (fast, no model needed)."""
import pytest
import torch

from flashhead import ClusterIndex, FlashHead, FlashHeadConfig, FlashHeadError, balanced_kmeans
from flashhead.core.index import fingerprint


def _head(v=2000, d=48, cs=16, probes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(v, d, generator=g)
    c = balanced_kmeans(w, cs, iterations=2, progress=False)
    index = ClusterIndex(FlashHeadConfig(cluster_size=cs, probes=probes), c.assignments, c.centroids,
                         fingerprint(w))
    return w, FlashHead(w, index)


@pytest.mark.parametrize("v", [2000, 2000 - 7])  # with and without a short last cluster
def test_all_clusters_probed_equals_dense(v):
    w, head = _head(v=v)
    head.probes = head.num_clusters
    h = torch.randn(3, 5, 48)                     # any leading shape
    dense = h @ w.T
    torch.testing.assert_close(head(h), dense, rtol=1e-5, atol=1e-4)  # fp32 summation order only
    assert torch.equal(head.greedy(h), dense.argmax(-1))


def test_probed_logits_are_exact_and_greedy_is_their_argmax():
    w, head = _head(probes=5)
    h = torch.randn(16, 48)
    scores, tok, z = head.probe(h)
    assert tok.shape == (16, 5 * 16)
    torch.testing.assert_close(z, (h @ w.T).gather(1, tok), rtol=1e-5, atol=1e-4)
    logits = head(h)
    torch.testing.assert_close(logits.gather(1, tok), z)
    assert torch.equal(logits.argmax(1), head.greedy(h))
    best = z.argmax(1, keepdim=True)
    assert torch.equal(head.greedy(h), tok.gather(1, best).squeeze(1))


def test_score_makes_the_target_exact_and_greedy_is_flashheads():
    """Teacher-forced scoring: the known target's logit is exact, the normaliser is FlashHead's
    logits with that token exact; the greedy token is FlashHead's own (chunking changes nothing)."""
    w, head = _head(probes=3)
    h = torch.randn(40, 48) * 2
    targets = torch.randint(0, 2000, (40,))
    logp, greedy = head.score(h, targets, chunk=16)
    exact = (h @ w.T).gather(1, targets[:, None])
    logits = head(h).scatter(1, targets[:, None], exact)
    torch.testing.assert_close(logp, (exact - logits.logsumexp(1, keepdim=True)).squeeze(1), rtol=1e-5, atol=1e-5)
    assert torch.equal(greedy, head.greedy(h))
    head.probes = head.num_clusters                   # every cluster probed: the dense log-softmax
    logp, greedy = head.score(h, targets)
    dense = (h @ w.T).log_softmax(1)
    torch.testing.assert_close(logp, dense.gather(1, targets[:, None]).squeeze(1), rtol=1e-5, atol=1e-4)
    assert torch.equal(greedy, dense.argmax(1))


def test_every_token_reachable_at_positive_temperature():
    w, head = _head(probes=2)
    p = torch.softmax(head(torch.randn(4, 48)), dim=-1)
    assert (p > 0).all() and torch.allclose(p.sum(-1), torch.ones(4))


def test_bad_probes_and_shapes_are_clear_errors():
    w, head = _head()
    with pytest.raises(FlashHeadError, match="probes"):
        head.probes = head.num_clusters + 1
    with pytest.raises(FlashHeadError, match="hidden states have size"):
        head(torch.randn(2, 47))
    _, other = _head(v=2000, seed=1)
    c = balanced_kmeans(w, 16, iterations=1, progress=False)
    index = ClusterIndex(other.config, c.assignments, c.centroids, fingerprint(torch.randn(2000, 48)))
    with pytest.raises(FlashHeadError, match="fingerprint"):
        FlashHead(w, index)
