"""TORCH kernel: the reference step in plain torch ops (every other path is tested against it).

Scores and exact logits are computed in fp32 from the stored operands (bf16 rows are upcast), so
the probed set and the argmax do not depend on output rounding.
"""
from __future__ import annotations

import torch

from ..q8rows import gather_rows


def stage1(head, h: torch.Tensor) -> torch.Tensor:
    return head.stage1(h)                                                # [N, K] fp32


def probe(head, h: torch.Tensor):
    """h [N, d] -> scores [N, K] fp32, token ids [N, P*cs (+F)], exact logits z [N, P*cs (+F)]
    fp32 (F: the always-exact tokens, head.with_exact)."""
    scores = stage1(head, h)                                             # [N, K]
    top = scores.topk(head.probes, dim=1, sorted=False).indices          # [N, P]
    tok = head.block_ids[top].flatten(1)                                 # [N, P*cs]
    rows = gather_rows(head.weight, tok.flatten()).view(*tok.shape, head.hidden)
    z = torch.bmm(rows.float(), h.float().unsqueeze(2)).squeeze(2)      # [N, P*cs]
    return (scores, *head.with_exact(h, tok, z))


def greedy(head, h: torch.Tensor) -> torch.Tensor:
    _, tok, z = probe(head, h)
    return tok.gather(1, z.argmax(1, keepdim=True)).squeeze(1)           # [N]


def logits(head, h: torch.Tensor) -> torch.Tensor:
    return head.fill_logits(*probe(head, h))                             # [N, V]
