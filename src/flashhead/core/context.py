"""A sequence's context: the clusters of the tokens it already holds (prompt and output).

Text repeats itself: a name, a word, a number that appeared once comes back. Where a step's top-P
clusters miss the dense head's top-1 token, that token was often already in the text (on text no
calibration covers, half or more of such misses; docs/FIDELITY.md, "Context-aware probes"). A
sequence's context is a [K] bool over the head's clusters, set for each token it holds; a step
passes the [N, K] masks of its positions to the head, and up to `context_probes` of the P probes go
to the context's best-scored clusters (kernels/step.py `rank`): the same bytes per step.

    ctx = Context(head.assignments, head.num_clusters)
    mask = ctx.of(prompt_ids)             # [K] bool, one sequence
    ctx.add(mask, new_ids)                # as tokens arrive
    running(head.assignments, K, inputs, first)   # [N, K]: teacher-forced text, position by position
"""
from __future__ import annotations

import torch

# The default context budget: this share of the probes (measured: docs/FIDELITY.md, "Context-aware
# probes"); a build's flashhead.json may set its own count (config.context_probes).
SHARE = 0.125


def default_for(probes: int) -> int:
    """The default context budget E at P probes."""
    return int(round(SHARE * probes))


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


def running(assignments: torch.Tensor, num_clusters: int, inputs: torch.Tensor, first: torch.Tensor,
            carry: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced positions: the context at each position [N, K] bool, the clusters of the
    tokens its text holds so far (its own input token included). `inputs` [N]: the token at each
    position; `first` [N] bool: the position starts a text; `carry` [K]: the context before the
    first position (its text began earlier), else empty."""
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
