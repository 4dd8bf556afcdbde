"""Context-aware probes (context.py, kernels/step.py `rank`) on synthetic heads: what the probed set
is, in every kernel, against the stage-1 scores it comes from (fast, no model needed)."""
import pytest
import torch

from flashhead import FlashHeadError
from flashhead.core.context import Context, running
from flashhead.kernels import Kernel

from test_head import _head


def _clusters(head, tok):
    """The set of clusters behind each row's probed token ids [N, P*cs]."""
    return [set(head.assignments[t].tolist()) for t in tok[:, : head.probes * head.cluster_size]]


@pytest.mark.parametrize("kernel", [Kernel.TORCH, Kernel.CPU])
def test_context_takes_at_most_e_probes_and_keeps_stage_ones_best(kernel):
    w, head = _head(v=4000, probes=12)
    head.kernel = kernel
    head.context_probes = 5
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 48, generator=g)
    ctx = torch.rand(6, head.num_clusters, generator=g) < 0.3
    ctx[0] = False                                       # a sequence with an empty context
    ctx[1] = False
    ctx[1, :2] = True                                    # ... and one with fewer than E clusters
    scores, tok, z = head.probe(h, ctx)
    plain = head.probe(h)[1]
    order = scores.argsort(1, descending=True)
    for i, (got, base) in enumerate(zip(_clusters(head, tok), _clusters(head, plain))):
        assert len(got) == head.probes                   # never fewer (nor more) than P clusters
        assert set(order[i, : head.probes - 5].tolist()) <= got      # stage 1's best P - E kept
        mine = ctx[i].nonzero().squeeze(1)
        best_ctx = mine[scores[i, mine].argsort(descending=True)][:5].tolist()
        assert set(best_ctx) <= got                      # the context's best E probed
        if i == 0:
            assert got == base                           # no context: stage 1's P
    torch.testing.assert_close(z, (h @ w.T).gather(1, tok), rtol=1e-5, atol=1e-4)
    logits = head(h, ctx)
    assert torch.equal(logits.argmax(1), head.greedy(h, ctx))
    torch.testing.assert_close(logits.gather(1, tok), z)


def test_context_changes_nothing_with_every_cluster_probed_or_none_reserved():
    w, head = _head(v=2000, probes=4)
    h = torch.randn(5, 48)
    ctx = torch.rand(5, head.num_clusters) < 0.5
    head.context_probes = 0
    assert torch.equal(head.greedy(h, ctx), head.greedy(h))
    torch.testing.assert_close(head(h, ctx), head(h))
    head.probes, head.context_probes = head.num_clusters, 3
    torch.testing.assert_close(head(h, ctx), h @ w.T, rtol=1e-5, atol=1e-4)
    assert torch.equal(head.greedy(h, ctx), (h @ w.T).argmax(1))


def test_context_masks_follow_the_tokens():
    _, head = _head(v=2000, probes=4)
    c = Context(head.assignments, head.num_clusters)
    m = c.of([5, 7])
    assert set(m.nonzero().squeeze(1).tolist()) == {int(head.assignments[5]), int(head.assignments[7])}
    c.add(m, [1999])
    assert bool(m[head.assignments[1999]])
    # teacher-forced: each position's context is its text so far, its own token included
    x = torch.tensor([3, 9, 11, 4, 5])
    first = torch.tensor([True, False, False, True, False])
    r = running(head.assignments, head.num_clusters, x, first)
    for i, holds in enumerate([[3], [3, 9], [3, 9, 11], [4], [4, 5]]):
        assert set(r[i].nonzero().squeeze(1).tolist()) == {int(head.assignments[t]) for t in holds}
    # a chunk that continues a text carries the context before it
    r2 = running(head.assignments, head.num_clusters, x[1:3], first[1:3], carry=r[0])
    assert torch.equal(r2, r[1:3])


def test_next_clusters_join_a_step_only():
    """A step's context is the held clusters and the next clusters of the token each row read last;
    the held masks are not changed (the next clusters are for that step only)."""
    from flashhead.core.context import with_next
    _, head = _head(v=2000, probes=4)
    succ = torch.randint(0, head.num_clusters, (2000, 3), generator=torch.Generator().manual_seed(1))
    c = Context(head.assignments, head.num_clusters)
    held = torch.stack([c.of([5, 7]), c.of([9])])
    keep = held.clone()
    got = with_next(held, [7, 11], succ)
    assert torch.equal(held, keep)
    for row, last in zip(range(2), (7, 11)):
        want = set(keep[row].nonzero().squeeze(1).tolist()) | set(succ[last].tolist())
        assert set(got[row].nonzero().squeeze(1).tolist()) == want
    assert with_next(held, [7, 11], None) is held                     # a build without them
    # every cluster probed: the next clusters change nothing; none reserved: nothing either
    h = torch.randn(2, 48)
    with head.flashhead_only(probes=head.num_clusters):
        assert torch.equal(head.greedy(h, got), head.greedy(h, held))
    head.context_probes = 0
    assert torch.equal(head.greedy(h, got), head.greedy(h))


def test_next_clusters_from_the_best_tokens_are_the_clusters_ranked_by_their_best_member():
    """clusters_of on a state's tokens, best first, gives the clusters in the order of their best
    member's logit (what build/successors.py stores); a row with fewer distinct clusters repeats."""
    from flashhead.build.successors import clusters_of
    g = torch.Generator().manual_seed(2)
    a = torch.randperm(200, generator=g) % 20                      # 20 clusters of 10 tokens
    logits = torch.randn(7, 200, generator=g)
    best = torch.full((7, 20), float("-inf")).scatter_reduce(1, a.expand(7, -1), logits, "amax")
    got = clusters_of(logits.argsort(1, descending=True), a, count=8, chunk=3)
    assert torch.equal(got, best.topk(8, 1).indices)
    few = clusters_of(torch.tensor([[0, 0, 1]]), torch.tensor([4, 2]), count=3)
    assert few.tolist() == [[4, 2, 4]]


def test_bad_context_is_a_clear_error():
    _, head = _head(v=2000, probes=4)
    head.context_probes = 2
    with pytest.raises(FlashHeadError, match="context"):
        head.greedy(torch.randn(3, 48), torch.zeros(2, head.num_clusters, dtype=torch.bool))
    with pytest.raises(FlashHeadError, match="context_probes"):
        head.context_probes = -1


def test_default_context_budget_follows_the_probes():
    """No count chosen: E is the default share of P at every P (a lower P keeps most probes for
    stage 1, the regression where P = 16 kept the E of P = 287 and probed the context alone);
    a chosen count stays."""
    from flashhead.core.context import default_for
    _, head = _head(v=4000, probes=40)
    assert head.context_probes == default_for(40) == 5
    with head.flashhead_only(probes=16):
        assert head.context_probes == default_for(16) == 2
    assert head.context_probes == 5
    head.context_probes = 7
    head.probes = 16
    assert head.context_probes == 7
