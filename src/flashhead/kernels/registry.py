"""The kernels by name: the object that runs the decode step for each concrete `Kernel`.

Each one computes, from the step's operands (kernels/step.py) and hidden states h [N, d]:

    stage1(step, h)  -> scores [N, K] fp32
    probe(step, h, context=None)   -> scores [N, K], token ids [N, P*cs (+F)], exact logits [N, P*cs (+F)] fp32
    greedy(step, h, context=None)  -> token ids [N]
    logits(step, h, context=None)  -> logits [N, V] fp32

`context` [N, K] bool: the clusters of the tokens each position's sequence holds (step.rank).

`kernels.resolve` picks the Kernel for a device; `KERNELS[kernel]` is the object that runs it.
"""
from __future__ import annotations

from typing import Protocol

import torch

from . import Kernel
from .cpu import CPU
from .torch_ref import TORCH
from .triton_path import TRITON


class StepKernel(Protocol):
    def stage1(self, step, h: torch.Tensor) -> torch.Tensor: ...

    def probe(self, step, h: torch.Tensor, context: torch.Tensor | None = None) -> tuple: ...

    def greedy(self, step, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor: ...

    def logits(self, step, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor: ...


KERNELS: dict[Kernel, StepKernel] = {Kernel.TORCH: TORCH, Kernel.CPU: CPU, Kernel.TRITON: TRITON}
