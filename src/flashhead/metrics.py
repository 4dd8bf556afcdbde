"""Fidelity and cost metrics of FlashHead against the dense head. Pure functions on tensors.

Shapes: N positions, V vocabulary, P*cs probed tokens per position.
"""
from __future__ import annotations

import torch

from .quant import stored_bytes


def top1_agreement(flash_ids: torch.Tensor, dense_logits: torch.Tensor) -> torch.Tensor:
    """[N] bool: FlashHead's greedy token == the dense argmax."""
    return flash_ids == dense_logits.argmax(-1)


def containment(probed_ids: torch.Tensor, dense_logits: torch.Tensor, k: int = 1) -> torch.Tensor:
    """[N] float: share of the dense top-k tokens that lie in the probed set [N, P*cs]."""
    top = dense_logits.topk(k, dim=-1).indices                            # [N, k]
    hit = (top.unsqueeze(2) == probed_ids.unsqueeze(1)).any(2)              # [N, k]
    return hit.float().mean(1)


def tv_distance(logits_a: torch.Tensor, logits_b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[N] total-variation distance between softmax(a / T) and softmax(b / T), in [0, 1]."""
    pa = torch.softmax(logits_a.float() / temperature, dim=-1)
    pb = torch.softmax(logits_b.float() / temperature, dim=-1)
    return 0.5 * (pa - pb).abs().sum(-1)


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N] negative log-likelihood of the target tokens (perplexity = exp(mean))."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the identical leading part of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cost(vocab: int, hidden: int, clusters: int, cluster_size: int, probes: int,
         quantization: str, dtype: torch.dtype) -> dict:
    """Rows and bytes one step reads, relative to the dense head (V rows of `dtype`).

    stage 1: all K centroids at their stored size (int8/int4 with scales counted);
    stage 2: P * cs head rows in the head's dtype.
    """
    elt = torch.empty((), dtype=dtype).element_size()
    stage2_rows = probes * cluster_size
    stage1_bytes = stored_bytes(clusters, hidden, quantization, dtype)
    return {"rows_scored_fraction": (clusters + stage2_rows) / vocab,
            "bytes_fraction": (stage1_bytes + stage2_rows * hidden * elt) / (vocab * hidden * elt)}
