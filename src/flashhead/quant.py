"""Selective quantization of stage 1: the centroids may be stored in int8 or int4.

Stage 2 (the exact logits) always uses the model's own head weight; only the centroid scores,
which merely rank clusters, are approximated. Symmetric per-row scales:
    int8: q = round(c / s) in [-127, 127],  s = max|c_row| / 127
    int4: q in [-7, 7], two values packed per byte (low nibble = even column)
"""
from __future__ import annotations

import torch

BITS = {"none": None, "int8": 8, "int4": 4}


def quantize_rows(c: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c [K, d] float -> (q int8 [K, d] or packed uint8 [K, d/2], scale [K] float32)."""
    qmax = 2 ** (bits - 1) - 1
    scale = c.abs().amax(dim=1).clamp_min(1e-12) / qmax
    q = torch.round(c / scale.unsqueeze(1)).clamp(-qmax, qmax).to(torch.int8)
    if bits == 4:
        if q.shape[1] % 2:
            raise ValueError("int4 stage 1 needs an even hidden size")
        u = (q + 8).to(torch.uint8)                       # [0, 15]
        q = u[:, 0::2] | (u[:, 1::2] << 4)
    return q, scale.float()


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 4:
        lo = (q & 0xF).to(torch.int8) - 8
        hi = (q >> 4).to(torch.int8) - 8
        q = torch.stack([lo, hi], dim=2).flatten(1)
    return q.float() * scale.unsqueeze(1)


def stored_bytes(num_rows: int, hidden: int, quantization: str, dtype: torch.dtype) -> int:
    """Bytes stage 1 reads per step: the centroid table at its real storage size, scales included."""
    bits = BITS[quantization]
    if bits is None:
        return num_rows * hidden * torch.empty((), dtype=dtype).element_size()
    return num_rows * hidden * bits // 8 + num_rows * 4


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
