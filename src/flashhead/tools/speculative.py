"""Verified decoding's decision: which of a sequence's K proposed tokens the dense head keeps.

FlashHead proposed y_1..y_K from the hidden states h_0..h_{K-1} (the body ran on y_1..y_{K-1});
the dense head scored the same K states. The sequence keeps the proposals up to the first one the
dense head does not accept, and there takes a token of the dense head's own:

    greedy    accept y_j while y_j = argmax dense(h_{j-1}); the first miss takes the dense argmax.
              The kept tokens are the dense model's greedy tokens, by construction.
    sampling  speculative sampling: accept y_j with probability min(1, p_j(y_j) / q_j(y_j)) (p the
              warped dense distribution, q the warped FlashHead one y_j was drawn from); the first
              rejection draws from max(0, p_j - q_j), renormalised. Each kept token is distributed
              as a draw from p_j: exact in distribution (Leviathan et al., 2023; Chen et al., 2023).

All K positions are decided with tensor ops (no loop over tokens). Returns (n, token): the first n
proposals are kept and `token` follows them (None when all K were kept: the next round feeds y_K).
"""
from __future__ import annotations

import torch


def accept_greedy(proposed: torch.Tensor, best: torch.Tensor):
    """proposed [K] token ids, best [K] the dense head's greedy tokens at the same positions
    -> (kept n, the dense token at n or None)."""
    miss = (best != proposed).nonzero()
    if not miss.numel():
        return proposed.numel(), None
    n = int(miss[0, 0])
    return n, int(best[n])


def accept_sampled(proposed: torch.Tensor, p: torch.Tensor, q: torch.Tensor, sampler):
    """proposed [K], p [K, V] the target's probabilities, q [K, V] the proposal's (the rows each
    y_j was drawn from), `sampler` the seeded draws -> (kept n, the token drawn at n or None)."""
    k = proposed.numel()
    rows = torch.arange(k)
    ratio = p[rows, proposed] / q[rows, proposed]                         # q(y) > 0: y was drawn from q
    u = sampler.uniform(k)
    miss = (u >= ratio).nonzero()
    if not miss.numel():
        return k, None
    n = int(miss[0, 0])
    residual = (p[n] - q[n]).clamp_min_(0)
    if float(residual.sum()) <= 0:        # p == q up to rounding: a rejection cannot happen, but
        residual = p[n]                   # floating point can make u >= ratio = 1 - eps
    return n, int(sampler.draw(residual.unsqueeze(0))[0])


class DraftLength:
    """K per sequence, adapted to how much the dense head keeps: all K kept doubles it (up to
    `most`), a rejection halves it (down to `least`)."""

    def __init__(self, most: int = 16, least: int = 2, start: int = 8):
        self.most, self.least = most, min(least, most)
        self.k = max(self.least, min(start, most))

    def update(self, kept: int, proposed: int) -> None:
        if kept == proposed:
            self.k = min(self.most, self.k * 2)
        else:
            self.k = max(self.least, self.k // 2)
