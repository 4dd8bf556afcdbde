"""Metric functions on hand-computable cases."""
import math

import torch

from flashhead.core import metrics


def test_tv_identical_is_zero_and_disjoint_is_one():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    assert metrics.tv_distance(a, a).item() == 0.0
    assert metrics.tv_distance(a, a, temperature=0.7).item() == 0.0
    # nearly one-hot on different tokens: softmax mass e^-100 elsewhere -> TV = 1 up to fp32 rounding
    x = torch.tensor([[100.0, 0.0]])
    y = torch.tensor([[0.0, 100.0]])
    assert abs(metrics.tv_distance(x, y).item() - 1.0) < 1e-6


def test_tv_hand_computed_and_temperature():
    # softmax([0, ln 3]) = [1/4, 3/4]; softmax([0, 0]) = [1/2, 1/2]: TV = 1/4
    a = torch.tensor([[0.0, math.log(3.0)]])
    b = torch.zeros(1, 2)
    assert abs(metrics.tv_distance(a, b).item() - 0.25) < 1e-6
    # T = 0.5 squares the odds: [1/10, 9/10] vs [1/2, 1/2] -> TV = 0.4
    assert abs(metrics.tv_distance(a, b, temperature=0.5).item() - 0.4) < 1e-6


def test_top1_agreement_and_containment():
    dense = torch.tensor([[0.0, 5.0, 1.0, 4.0], [3.0, 0.0, 2.0, 1.0]])  # top-1: 1, 0; top-2: {1,3}, {0,2}
    assert metrics.top1_agreement(torch.tensor([1, 2]), dense).tolist() == [True, False]
    probed = torch.tensor([[1, 2], [2, 3]])
    assert metrics.containment(probed, dense, 1).tolist() == [1.0, 0.0]
    assert metrics.containment(probed, dense, 2).tolist() == [0.5, 0.5]


def test_nll_matches_log_softmax():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert abs(metrics.nll(logits, torch.tensor([1])).item() - math.log(4 / 3)) < 1e-6


def test_common_prefix():
    assert metrics.common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert metrics.common_prefix([1, 2], [1, 2, 3]) == 2
    assert metrics.common_prefix([5], [6]) == 0


def test_cost_counts_stage1_at_stored_size():
    # V=1024, d=64, K=64 clusters of 16, P=4, fp32 head: stage 1 64*64*4 B, stage 2 64 rows * 64 * 4 B
    c = metrics.cost(1024, 64, 64, 16, 4, "none", torch.float32)
    assert c["rows_scored_fraction"] == (64 + 64) / 1024
    assert c["bytes_fraction"] == (64 * 64 * 4 + 64 * 64 * 4) / (1024 * 64 * 4)
    # int4 centroids: d/2 bytes per row + a 4-byte scale
    q = metrics.cost(1024, 64, 64, 16, 4, "int4", torch.float32)
    assert q["bytes_fraction"] == (64 * (32 + 4) + 64 * 64 * 4) / (1024 * 64 * 4)
