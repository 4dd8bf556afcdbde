"""TORCH kernel: the reference step in plain torch ops (every other path is tested against it).

Scores and exact logits are computed in fp32 from the stored operands (bf16 rows are upcast), so
the probed set and the argmax do not depend on output rounding.
"""
from __future__ import annotations

import torch

from ..q8rows import gather_rows
from .step import pick


def stage1(step, h: torch.Tensor) -> torch.Tensor:
    return step.stage1(h)                                                # [N, K] fp32


def probe(step, h: torch.Tensor):
    """h [N, d] -> scores [N, K] fp32, token ids [N, P*cs (+F)], exact logits z [N, P*cs (+F)]
    fp32 (F: the always-exact tokens, step.with_exact)."""
    scores = stage1(step, h)                                             # [N, K]
    top, tok = step.probed(scores)                                       # [N, P], [N, P*cs]
    rows = gather_rows(step.weight, step.block_rows[top].flatten()).view(*tok.shape, step.hidden)
    z = step.masked(torch.bmm(rows.float(), h.float().unsqueeze(2)).squeeze(2), top)   # [N, P*cs]
    return (scores, *step.with_exact(h, tok, z))


def greedy(step, h: torch.Tensor) -> torch.Tensor:
    return pick(*probe(step, h)[1:])                                     # [N]


def logits(step, h: torch.Tensor) -> torch.Tensor:
    return step.fill_logits(h, *probe(step, h))                          # [N, V]
