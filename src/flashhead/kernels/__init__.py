"""Kernel choice for the FlashHead decode step: an enum with AUTO, resolved per device.

    TORCH   the reference: plain torch ops (stage-1 matmul, topk, index_select + bmm, scatter).
            Runs anywhere; every other path is tested against it.
    CPU     torch ops tuned for the CPU: preallocated workspaces (no page faults from fresh
            multi-MB buffers each step), `out=` everywhere, int8/int4 stage 1 through torch's
            packed weight-only kernels. Same results as TORCH (up to fp32 summation order; the
            quantized stage 1 rounds the hidden state to bf16, see cpu.py).
    TRITON  CUDA: fp32-output stage 1, one-program-per-row exact top-P, fused stage 2
            (gather blocks + dot + per-row argmax), and one logits kernel (estimate + exact).
            On the CPU only under Triton's interpreter (TRITON_INTERPRET=1): slow, for tests, so
            that CI without a GPU still checks the kernels' logic (tests/test_kernels.py).
    AUTO    TRITON on a CUDA device when Triton is installed, CPU on the CPU, TORCH otherwise.

An explicit choice asserts its requirements (FlashHeadError), AUTO falls back quietly. The object
that runs a Kernel's step is `registry.KERNELS[kernel]`.
`FLASHHEAD_KERNEL=torch|cpu|triton` overrides AUTO (handy for A/B runs).
Triton is imported only when the TRITON path is first used.
"""
from __future__ import annotations

import enum
import importlib.util
import os

import torch

from ..core.config import FlashHeadError


class Kernel(str, enum.Enum):
    AUTO = "auto"
    TORCH = "torch"
    CPU = "cpu"
    TRITON = "triton"


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1): tests only."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def parse(kernel: "Kernel | str") -> Kernel:
    try:
        return Kernel(kernel.value if isinstance(kernel, Kernel) else str(kernel).lower())
    except ValueError:
        raise FlashHeadError(f"unknown kernel {kernel!r}: choose one of "
                             f"{', '.join(k.value for k in Kernel)}") from None


def resolve(kernel: "Kernel | str", device: torch.device) -> Kernel:
    """The concrete kernel for `device`: AUTO picks, an explicit choice is checked."""
    kernel = parse(kernel)
    if kernel is Kernel.AUTO and os.environ.get("FLASHHEAD_KERNEL"):
        kernel = parse(os.environ["FLASHHEAD_KERNEL"])
    if kernel is Kernel.AUTO:
        if device.type == "cuda" and triton_available():
            return Kernel.TRITON
        return Kernel.CPU if device.type == "cpu" else Kernel.TORCH
    if kernel is Kernel.TRITON:
        if device.type != "cuda" and not interpreting():
            raise FlashHeadError(f"kernel 'triton' needs the head on a CUDA device, it is on {device}")
        if not triton_available():
            raise FlashHeadError("kernel 'triton' needs the triton package (pip install triton)")
    if kernel is Kernel.CPU and device.type != "cpu":
        raise FlashHeadError(f"kernel 'cpu' needs the head on the CPU, it is on {device}")
    return kernel
