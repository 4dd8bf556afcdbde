"""Calibration from the model's own hidden states (training-free for the model).

The score error of replacing a row w by its cluster mean c is h . (w - c); over hidden states h
its expected square is (w - c)^T Sigma (w - c), Sigma = E[h h^T] [d, d]. So
    query_transform(Sigma) = Sigma^(1/2)   k-means on W Sigma^(1/2) minimizes the expected
                                           squared error of every cluster-mean logit;
    weighted_spread(...)   [K]             per-cluster E[(h . (w - c))^2] / E|h|^2, the variance
                                           of member logits around the cluster mean per unit |h|^2.
"""
from __future__ import annotations

import torch


def second_moment(h: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """h [N, d] -> Sigma = mean_n h_n h_n^T [d, d] float32 (accumulated in float64)."""
    h = h.reshape(-1, h.shape[-1])
    acc = torch.zeros(h.shape[1], h.shape[1], dtype=torch.float64, device=h.device)
    for s in range(0, h.shape[0], chunk):
        x = h[s:s + chunk].double()
        acc += x.T @ x
    return (acc / h.shape[0]).float()


def query_transform(sigma: torch.Tensor, shrink: float = 0.0) -> torch.Tensor:
    """Sigma [d, d] -> Sigma_s^(1/2) [d, d], Sigma_s = (1 - shrink) Sigma + shrink tr(Sigma)/d I.

    Shrinking toward the isotropic matrix keeps directions rare in the calibration text from
    being ignored entirely (shrink = 1 gives plain Euclidean k-means, up to scale).
    """
    d = sigma.shape[0]
    s = (1 - shrink) * sigma.double() + shrink * torch.trace(sigma.double()) / d * torch.eye(d, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(s)
    return ((evecs * evals.clamp_min(0).sqrt()) @ evecs.T).float()


def weighted_spread(weight: torch.Tensor, assignments: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """[K]: mean over a cluster's members of (w - c)^T Sigma (w - c) / tr(Sigma), c = member mean."""
    w = weight.float()
    k = int(assignments.max()) + 1
    count = torch.bincount(assignments, minlength=k).clamp_min(1).unsqueeze(1).float()
    mean = torch.zeros(k, w.shape[1]).index_add_(0, assignments, w) / count
    dev = w - mean[assignments]
    q = ((dev @ sigma.float()) * dev).sum(1)                          # [V]
    return torch.zeros(k).index_add_(0, assignments, q) / count.squeeze(1) / torch.trace(sigma.float())
