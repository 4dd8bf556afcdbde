"""TORCH kernel: the reference step in plain torch ops (every other kernel is tested against it).

Scores and exact logits are computed in fp32 from the stored operands (bf16 rows are upcast), so
the probed set and the argmax do not depend on output rounding.
"""
from __future__ import annotations

import torch

from .step import pick


class TorchKernel:
    def stage1(self, step, h: torch.Tensor) -> torch.Tensor:
        return step.stage1(h)                                            # [N, K] fp32

    def probe(self, step, h: torch.Tensor, context: torch.Tensor | None = None):
        """h [N, d] -> scores [N, K] fp32, token ids [N, P*cs (+F)], exact logits z [N, P*cs (+F)]
        fp32 (F: the always-exact tokens, step.with_exact); `context` [N, K] bool: step.rank."""
        scores = self.stage1(step, h)                                    # [N, K]
        top, tok = step.probed(scores, context)                          # [N, P], [N, P*cs]
        rows = step.rows.gather(step.block_rows[top].flatten()).view(*tok.shape, step.hidden)
        z = step.masked(torch.bmm(rows.float(), h.float().unsqueeze(2)).squeeze(2), top)   # [N, P*cs]
        return (scores, *step.with_exact(h, tok, z))

    def greedy(self, step, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return pick(*self.probe(step, h, context)[1:])                   # [N]

    def logits(self, step, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return step.fill_logits(h, *self.probe(step, h, context))        # [N, V]


TORCH = TorchKernel()
