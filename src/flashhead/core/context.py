"""A sequence's context: the clusters of the tokens it already holds (prompt and output).

Text repeats itself: a name, a word, a number that appeared once comes back. Where a step's top-P
clusters miss the dense head's top-1 token, that token was often already in the text (on text no
calibration covers, half or more of such misses; docs/FIDELITY.md, "Context-aware probes"). A
sequence's context is a [K] bool over the head's clusters, set for each token it holds; a step
passes the [N, K] masks of its positions to the head, and up to `context_probes` of the P probes go
to the context's best-scored clusters (kernels/step.py `rank`): the same bytes per step.

A build may also store each token's next clusters (build/successors.py: where the model's next
token lies after that token alone); then a step's context is the sequence's clusters and the next
clusters of the token it has just read (`with_next`), for that step only.

    ctx = Context(head.assignments, head.num_clusters)
    mask = ctx.of(prompt_ids)             # [K] bool, one sequence
    ctx.add(mask, new_ids)                # as tokens arrive
    masks = with_next(torch.stack(held), last_ids, head.successors)   # [N, K]: a step's contexts
    held = running(head.assignments, K, inputs, first)   # [N, K]: teacher-forced, position by position
    masks = with_next(held, inputs, head.successors)
"""
from __future__ import annotations

import torch

# The default context budget: this share of the probes (measured: docs/FIDELITY.md, "Context-aware
# probes"); a build's flashhead.json may set its own count (config.context_probes).
SHARE = 0.125


# Next clusters a step adds for the token it has just read: one per NEXT_PER of the context budget
# E (they compete for the same E probes; too many crowd out the held clusters at a small E:
# docs/FIDELITY.md, "Next clusters").
NEXT_PER = 6


def default_for(probes: int) -> int:
    """The default context budget E at P probes."""
    return int(round(SHARE * probes))


def next_count(context_probes: int, stored: int) -> int:
    """How many of a token's `stored` next clusters a step uses at context budget E."""
    return min(stored, context_probes // NEXT_PER)


class Context:
    """Makes and updates the per-sequence masks of one head (its token -> cluster table)."""

    def __init__(self, assignments: torch.Tensor, num_clusters: int):
        self.assignments, self.num_clusters = assignments, num_clusters

    def of(self, ids) -> torch.Tensor:
        """The [K] bool mask of the clusters of token ids `ids`."""
        mask = torch.zeros(self.num_clusters, dtype=torch.bool, device=self.assignments.device)
        return self.add(mask, ids)

    def add(self, mask: torch.Tensor, ids) -> torch.Tensor:
        """Set the clusters of `ids` in `mask` [K] (in place); returns it."""
        ids = torch.as_tensor(ids, dtype=torch.int64, device=self.assignments.device).reshape(-1)
        if ids.numel():
            mask[self.assignments[ids]] = True
        return mask


def with_next(masks: torch.Tensor, last, successors: torch.Tensor | None) -> torch.Tensor:
    """masks [N, K] bool, last [N] token ids -> masks with each row's next clusters of its token set
    (successors [V, m]; None: masks as they are, no copy)."""
    if successors is None:
        return masks
    last = torch.as_tensor(last, dtype=torch.int64, device=successors.device).reshape(-1)
    out = masks.clone()
    out.scatter_(1, successors[last].to(out.device), True)
    return out


def running(assignments: torch.Tensor, num_clusters: int, inputs: torch.Tensor, first: torch.Tensor,
            carry: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced positions: the held clusters at each position [N, K] bool, those of the
    tokens its text holds so far (its own input token included; a step's context adds the next
    clusters of that token: `with_next(held, inputs, successors)`). `inputs` [N]: the token at each
    position; `first` [N] bool: the position starts a text; `carry` [K]: the held clusters before
    the first position (its text began earlier), else empty."""
    n = inputs.shape[0]
    hit = torch.zeros(n, num_clusters, dtype=torch.int32)
    hit[torch.arange(n), assignments[inputs].cpu()] = 1
    starts = first.nonzero().squeeze(1).tolist()
    bounds = sorted(set([0] + starts + [n]))
    out = torch.empty(n, num_clusters, dtype=torch.bool)
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = hit[a:b].cumsum(0) > 0
        if a == 0 and not bool(first[0]) and carry is not None:
            seg |= carry.cpu()
        out[a:b] = seg
    return out
