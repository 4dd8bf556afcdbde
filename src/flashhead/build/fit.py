"""Fitting an index to a head and the model's hidden states: clusters, probes, estimate offsets.

    fit_index(W, H, config, held_out=H')   the whole fit (what `flashhead build` runs after it
                                            has the calibration states) =
                                            fit_probes(fit_clusters(...), ...)
    dense_top1_rank / smallest_probes      the agreement every probe count reaches, in one pass
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from .clustering import balanced_kmeans
from ..core.config import FlashHeadConfig
from ..core.head import FlashHead
from ..core.index import ClusterIndex, fingerprint
from ..core.estimate import FIT_LOGITS, FIT_POSITIONS, fit_offsets
from ..core.metrics import cost
from .calibrate import Calibration, query_transform, token_weights, within

# Default probes: the smallest count reaching this greedy agreement on held-out calibration
# positions, but never more than BYTES_BUDGET of the dense head's bytes (both served in bf16).
# Held-out calibration text is in-domain; on text the build never saw the same P agrees less
# (docs/FIDELITY.md), hence a target above the 99.5% asked for unseen text, under the budget.
TARGET_AGREEMENT = 0.998
BYTES_BUDGET = 0.125


def budget_probes(vocab: int, hidden: int, cluster_size: int, quantization: str, budget: float = BYTES_BUDGET) -> int:
    """The most probes whose step reads at most `budget` of the dense head's bytes (bf16)."""
    k = -(-vocab // cluster_size)
    lo, hi = 1, k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        ok = cost(vocab, hidden, k, cluster_size, mid, quantization, torch.bfloat16)["bytes_fraction"] <= budget
        lo, hi = (mid, hi) if ok else (lo, mid - 1)
    return lo


def dense_top1_rank(head: FlashHead, H: torch.Tensor, weight: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """[N]: rank (0 = first) of the cluster holding the dense argmax among the stage-1 scores.

    The dense top-1 token is probed, and FlashHead's greedy token equals it, when this rank is
    below P: one pass gives the agreement of every probe count. Clusters tied with it count as
    ranked before it (bf16 scores of the CPU int8 kernel tie often)."""
    w = weight.float()
    ranks = []
    for s in range(0, H.shape[0], chunk):
        h = H[s:s + chunk]
        top1 = (h.float() @ w.T).argmax(1)                                    # [n]
        scores = head.scores(h.to(weight.dtype))                              # [n, K]
        own = scores.gather(1, head.assignments[top1].unsqueeze(1))           # [n, 1]
        ranks.append((scores >= own).sum(1) - 1)
    return torch.cat(ranks)


def smallest_probes(ranks: torch.Tensor, target: float) -> int:
    """Smallest P whose greedy agreement reaches `target`, from dense_top1_rank's ranks [N]."""
    ranks = ranks.sort().values
    need = min(max(math.ceil(target * ranks.numel()), 1), ranks.numel())
    return int(ranks[need - 1]) + 1


def fit_index(weight: torch.Tensor, h: torch.Tensor, config: FlashHeadConfig, device: str | None = None,
              progress: bool = False, held_out: torch.Tensor | None = None,
              target_agreement: float = TARGET_AGREEMENT, probes: int | None = None,
              usage_floor: float | None = None, shrink: float = 0.0) -> ClusterIndex:
    """The index of head `weight` [V, d] fitted to calibration hidden states h [N, d]:
    1. clusters: balanced k-means on W sigma_dir^(1/2), usage-weighted stage-1 vectors
       (calibrate.py; `fit_clusters`);
    2. probes and 3. the estimate's offsets (`fit_probes`).
    index.build records the seconds of each step and the held-out agreement."""
    index = fit_clusters(weight, h, config, device, progress, usage_floor, shrink)
    return fit_probes(index, weight, h, held_out, target_agreement, probes, progress)


def fit_clusters(weight: torch.Tensor, h: torch.Tensor, config: FlashHeadConfig, device: str | None = None,
                 progress: bool = False, usage_floor: float | None = None, shrink: float = 0.0) -> ClusterIndex:
    """Step 1 of fit_index: the clusters and their stage-1 vectors (config.probes as given);
    `shrink` pulls the metric toward the identity (calibrate.query_transform)."""
    t0 = time.perf_counter()
    cal = Calibration.from_hidden(weight, h)
    clustering = balanced_kmeans(weight, config.cluster_size, config.iterations, config.seed, device=device,
                                 progress=progress, metric="euclidean",
                                 transform=query_transform(cal.sigma_dir, shrink),
                                 token_weights=token_weights(cal.usage, *(() if usage_floor is None else (usage_floor,))))
    index = ClusterIndex(config, clustering.assignments, clustering.centroids, fingerprint(weight),
                         build=dict(clustering.stats))
    index.build["seconds"] = {"clustering": round(time.perf_counter() - t0, 1)}
    return index


def fit_probes(index: ClusterIndex, weight: torch.Tensor, h: torch.Tensor, held_out: torch.Tensor | None = None,
               target_agreement: float = TARGET_AGREEMENT, probes: int | None = None,
               progress: bool = False) -> ClusterIndex:
    """Steps 2 and 3 of fit_index, on the clusters of `index` and its config (stage-1 storage
    included), in place:
    2. probes: `probes` if given, else the smallest count whose greedy agreement with the dense
       head reaches `target_agreement` on the hidden states `held_out`, capped at BYTES_BUDGET
       (else config.probes);
    3. the estimate's per-token offsets at those probes (estimate.py), from h."""
    config = index.config
    t1 = time.perf_counter()
    agreement = None
    if held_out is not None:
        ranks = dense_top1_rank(FlashHead(weight, index, probes=1), held_out, weight)
        probes = probes or min(smallest_probes(ranks, target_agreement),
                               budget_probes(*weight.shape, config.cluster_size, config.quantization))
        agreement = float((ranks < probes).float().mean())
    index.config = dataclasses.replace(config, probes=probes or config.probes)
    t2 = time.perf_counter()
    index.offsets = torch.zeros(weight.shape[0])          # one step from zero, as on fresh clusters
    sample = within(h, weight.shape[0], FIT_LOGITS, FIT_POSITIONS)
    index.offsets = fit_offsets(FlashHead(weight, index), weight, sample, progress=progress)
    t3 = time.perf_counter()
    index.build["held_out_agreement"] = agreement
    index.build.setdefault("seconds", {}).update(probes=round(t2 - t1, 1), estimate=round(t3 - t2, 1))
    return index
