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


def kl_divergence(dense_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """[N] KL(dense || FlashHead) in nats, each position's full-vocabulary distributions at T = 1:
    what llama.cpp's `llama-perplexity --kl-divergence` reports for a quantization against its base."""
    ld, lf = dense_logits.float().log_softmax(-1), logits.float().log_softmax(-1)
    return (ld.exp() * (ld - lf)).sum(-1).clamp_min(0.0)


def delta_p(dense_logits: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N] the target token's probability under FlashHead less under the dense head (llama.cpp's Δp)."""
    t = targets[:, None]
    return (logits.float().softmax(-1).gather(1, t) - dense_logits.float().softmax(-1).gather(1, t)).squeeze(1)


def distribution_stats(kld: torch.Tensor, dp: torch.Tensor) -> dict:
    """llama-perplexity's KL-divergence summary of per-position KLD and Δp [N]: mean, median,
    99th and 99.9th percentile and maximum KLD; Δp mean, RMS and 1st/5th/50th/95th/99th percentiles."""
    kld, dp = kld.double(), dp.double()

    def q(x, p):
        return float(torch.quantile(x, p))
    return {"kld_mean": float(kld.mean()), "kld_median": q(kld, 0.5), "kld_p99": q(kld, 0.99),
            "kld_p999": q(kld, 0.999), "kld_max": float(kld.max()),
            "delta_p_mean": float(dp.mean()), "delta_p_rms": float(dp.pow(2).mean().sqrt()),
            **{f"delta_p_p{k}": q(dp, k / 100) for k in (1, 5, 50, 95, 99)}}


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
