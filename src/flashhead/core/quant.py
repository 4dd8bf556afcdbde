"""Selective quantization of stage 1: the centroids may be stored in int8 or int4.

Stage 2 (the exact logits) always uses the model's own head weight; only the centroid scores,
which merely rank clusters, are approximated. Symmetric scales:
    int8: q = round(c / s) in [-127, 127],  s = max|c_row| / 127, one per row
    int4: q in [-7, 7], s = max|c_group| / 7, one per group of INT4_GROUP columns (one per row
          where the hidden size is not a multiple), two values packed per byte (low nibble = even
          column, stored as q + 8)
int4 with one scale per row ranked clusters worse than int8 even with the probes its smaller
table buys at equal bytes (SmolLM2, 2026-11-30); with a scale per 64 columns it ranks like int8
(SmolLM2) or better (Gemma-3-270M): experiments/FINDINGS.md, "int4 stage 1".
"""
from __future__ import annotations

import torch

from .config import FlashHeadError

BITS = {"none": None, "int8": 8, "int4": 4}
INT4_GROUP = 64


def groups(hidden: int, bits: int) -> int:
    """Scales per row: one for int8; for int4 one per INT4_GROUP columns, or one per row."""
    return hidden // INT4_GROUP if bits == 4 and hidden % INT4_GROUP == 0 else 1


def quantize_rows(c: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c [K, d] float -> (q int8 [K, d] or packed uint8 [K, d/2], scale float32 [K] (int8) or
    [K, G] (int4, G = groups(d, 4)))."""
    qmax = 2 ** (bits - 1) - 1
    k, d = c.shape
    g = groups(d, bits)
    scale = c.reshape(k, g, d // g).abs().amax(dim=2).clamp_min(1e-12) / qmax        # [K, G]
    q = torch.round(c / scale.repeat_interleave(d // g, 1)).clamp(-qmax, qmax).to(torch.int8)
    if bits == 4:
        if d % 2:
            raise FlashHeadError(f"int4 stage 1 needs an even hidden size, got {d}; build with --quantization int8")
        u = (q + 8).to(torch.uint8)                       # [0, 15]
        return u[:, 0::2] | (u[:, 1::2] << 4), scale.float()
    return q, scale.squeeze(1).float()


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 4:
        lo = (q & 0xF).to(torch.int8) - 8
        hi = (q >> 4).to(torch.int8) - 8
        q = torch.stack([lo, hi], dim=2).flatten(1)
    scale = scale.reshape(q.shape[0], -1)
    return q.float() * scale.repeat_interleave(q.shape[1] // scale.shape[1], 1)


def stored_bytes(num_rows: int, hidden: int, quantization: str, dtype: torch.dtype) -> int:
    """Bytes stage 1 reads per step: the centroid table at its real storage size, 4 bytes per
    scale (int4: torch's CPU kernel reads a bf16 scale and a bf16 zero per group)."""
    bits = BITS[quantization]
    if bits is None:
        return num_rows * hidden * torch.empty((), dtype=dtype).element_size()
    return num_rows * hidden * bits // 8 + num_rows * groups(hidden, bits) * 4


class Stage1(torch.nn.Module):
    """Centroid scores s = h @ C.T [N, K] in float32, from C stored as float, int8 or int4."""

    def __init__(self, centroids: torch.Tensor, quantization: str, dtype: torch.dtype, device):
        super().__init__()
        self.quantization = quantization
        self.bits = BITS[quantization]
        if self.bits is None:
            self.register_buffer("centroids", centroids.to(device=device, dtype=dtype).contiguous(),
                                 persistent=False)
        else:
            q, scale = quantize_rows(centroids.float(), self.bits)
            self.register_buffer("q", q.to(device), persistent=False)
            self.register_buffer("scale", scale.to(device), persistent=False)
            self.register_buffer("scale_bf16", scale.to(device, torch.bfloat16), persistent=False)
        self.num_rows, self.hidden = centroids.shape

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            if self.centroids.dtype == torch.float32:
                return h.float() @ self.centroids.T
            # fp32 scores from bf16/fp16 operands: no output rounding, so no ties in the ranking
            return h.to(self.centroids.dtype).float() @ self.centroids.float().T
        # Reference path: dequantize then multiply. Fast kernels replace this (kernels/).
        c = dequantize_rows(self.q, self.scale, self.bits)
        return h.float() @ c.T

    def nbytes(self, dtype: torch.dtype) -> int:
        return stored_bytes(self.num_rows, self.hidden, self.quantization, dtype)
