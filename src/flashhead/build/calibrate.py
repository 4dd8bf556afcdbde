"""Calibration: statistics of the model's own hidden states that shape a build (training-free).

From hidden states H [N, d] (the input of the head; see hidden.py) and the head W [V, d]:
    sigma_dir = E[h h^T / |h|^2] [d, d]  where the states point, norm removed (a few massive-norm
                                         states would otherwise dominate). Balanced k-means on
                                         W sigma_dir^(1/2) minimizes the expected squared error of
                                         every cluster-mean logit over those directions.
    usage     = E[softmax(h W^T)] [V]    the dense head's mean probability of each token.
                                         Stage-1 vectors are members' means weighted by
                                         sqrt(usage + 1e-6): a cluster is ranked by its likely tokens.
Measured on held-out real text (docs/FIDELITY.md): each of the two cuts the dense top-1 misses.
"""
from __future__ import annotations

import dataclasses

import torch

# Token weight floor: a token the calibration never saw keeps (1e-6)^(1/2) = 1e-3 of the weight
# of one that holds 1 of probability mass. 1e-8 and 1e-6 measured alike, 1/V (2e-5) worse.
USAGE_FLOOR = 1e-6
# The usage statistic reads at most this many dense logits (positions x V), from positions spread
# over every calibration source (`within`). Measured (experiments/build_recipe.py: fixed P, the
# suite's eval documents, in-domain; docs/FIDELITY.md): SmolLM2 (V = 49,152) with 4,096 of its
# 12,285 fit positions lost 1.4 points on legal text (97.9% -> 96.5%), so a small vocabulary reads
# every position (2^30 / V = 21,845); Gemma-3-270M (V = 262,144) reads 4,096: the same agreement on
# the six eval domains (within 3 of 2,048 positions each), 65 s less of its build on 2 cores.
USAGE_LOGITS = 2 ** 30


def spread(n: int, k: int) -> torch.Tensor:
    """min(k, n) position indices evenly spread over [0, n): every source of a calibration, which
    comes source after source, gets its share."""
    return torch.linspace(0, n - 1, min(k, n)).long()


def within(h: torch.Tensor, vocab: int, logits: int, most: int | None = None) -> torch.Tensor:
    """The rows of h [N, d] a dense pass of at most `logits` logits (rows x vocab) reads, at most
    `most` of them and at least one, spread over h (`spread`)."""
    k = max(1, logits // vocab)
    return h[spread(h.shape[0], k if most is None else min(k, most))]


def second_moment(h: torch.Tensor, normalize: bool = False, chunk: int = 4096) -> torch.Tensor:
    """h [N, d] -> mean_n h_n h_n^T [d, d] float32 (accumulated in float64); rows scaled to unit
    norm first when `normalize`."""
    h = h.reshape(-1, h.shape[-1])
    acc = torch.zeros(h.shape[1], h.shape[1], dtype=torch.float64, device=h.device)
    for s in range(0, h.shape[0], chunk):
        x = h[s:s + chunk].double()
        if normalize:
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
        acc += x.T @ x
    return (acc / h.shape[0]).float()


def query_transform(sigma: torch.Tensor, shrink: float = 0.0) -> torch.Tensor:
    """Sigma [d, d] -> Sigma_s^(1/2) [d, d], Sigma_s = (1 - shrink) Sigma + shrink tr(Sigma)/d I.

    shrink = 1 gives plain Euclidean k-means (up to scale)."""
    d = sigma.shape[0]
    s = (1 - shrink) * sigma.double() + shrink * torch.trace(sigma.double()) / d * torch.eye(d, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(s)
    return ((evecs * evals.clamp_min(0).sqrt()) @ evecs.T).float()


def token_usage(weight: torch.Tensor, h: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """[V]: mean over h [N, d] of the dense softmax(h W^T) (W [V, d])."""
    w = weight.float()
    acc = torch.zeros(w.shape[0], dtype=torch.float64)
    for s in range(0, h.shape[0], chunk):
        acc += torch.softmax(h[s:s + chunk].float() @ w.T, dim=1).sum(0).double()
    return (acc / h.shape[0]).float()


def token_weights(usage: torch.Tensor, floor: float = USAGE_FLOOR) -> torch.Tensor:
    return (usage + floor).sqrt()


@dataclasses.dataclass
class Calibration:
    sigma_dir: torch.Tensor   # [d, d]
    usage: torch.Tensor       # [V]

    @classmethod
    def from_hidden(cls, weight: torch.Tensor, h: torch.Tensor) -> "Calibration":
        h = h.float()
        return cls(second_moment(h, normalize=True), token_usage(weight, within(h, weight.shape[0], USAGE_LOGITS)))
