"""The dense rule: when a step runs the model's dense head instead of FlashHead.

A step of N positions reads N*P*cs stage-2 rows; above `above` * V rows the dense head is cheaper.
Each integration measured its own crossover for its own dense head ({"device": fraction of V,
"device/dtype": ..., "cpu/bfloat16/avx512_bf16": ...}: integrations/hf.py,
integrations/vllm/logits.py) and builds its rule with `DenseRule.measured`; the core default is off
(None). FLASHHEAD_DENSE_RULE=0 turns every rule off. A CPU with bf16 instructions (AVX512-BF16) runs
a bf16 dense head several times faster than one without (AVX2), hence its own entry.

One object per head routes each step once and counts it; the counts are logged at 1, 10, 100, ...
steps (host-side ints only: no device sync), so a dense fallback is never silent.
"""
from __future__ import annotations

import logging
import os

import torch

ENV = "FLASHHEAD_DENSE_RULE"
_MILESTONES = {1, 10, 100, 1000, 10000, 100000}
log = logging.getLogger("flashhead")


class DenseRule:
    def __init__(self, above: float | None = None, logger: logging.Logger | None = None):
        self.above = above                      # fraction of V in stage-2 rows; None: off
        self.stats = {"flashhead_steps": 0, "dense_steps": 0}
        self.log = logger or log                # an integration may log through its framework's logger

    @classmethod
    def measured(cls, crossover: dict, weight: torch.Tensor, logger: logging.Logger | None = None) -> "DenseRule":
        """The rule for a head weight from an integration's crossovers (the dtype entry first)."""
        if os.environ.get(ENV, "1") == "0":
            return cls(None, logger)
        kind = weight.device.type
        dtype = f"{kind}/{str(weight.dtype).removeprefix('torch.')}"
        keys = [dtype, kind]
        if kind == "cpu" and weight.dtype == torch.bfloat16 and torch.cpu._is_avx512_bf16_supported():
            keys.insert(0, f"{dtype}/avx512_bf16")
        return cls(next((crossover[k] for k in keys if k in crossover), None), logger)

    def dense(self, rows: int, vocab: int) -> bool:
        """Route one step that would read `rows` stage-2 rows: True -> the dense head. Counted."""
        use = self.above is not None and rows > self.above * vocab
        self.stats["dense_steps" if use else "flashhead_steps"] += 1
        total = self.stats["flashhead_steps"] + self.stats["dense_steps"]
        if total in _MILESTONES and not torch.compiler.is_compiling():   # (no logging in a traced graph)
            self.log.info("FlashHead steps: flashhead=%d dense=%d", self.stats["flashhead_steps"],
                     self.stats["dense_steps"])
        return use
