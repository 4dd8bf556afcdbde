"""Balanced spherical k-means: group the head's V rows into K clusters of exactly `cs` rows.

    W [V, d] --normalize--> X [V, d]
    init    : two-level split. X -> G groups (balanced k-means, G ~ sqrt(K)), then each group ->
              its share of the K clusters (balanced k-means inside the group).
    refine  : `iterations` rounds of: centroids -> each cluster's M nearest clusters -> every row
              re-chooses among the neighbours of its current cluster, under exact capacities.
    result  : assignments [V], stage-1 centroids [K, d] (raw means of the member rows: h . mean(w)
              is exactly the mean logit of the cluster), stats.

Never materialises a V x K matrix: flat scoring is chunked over rows, refinement scores each row
against M candidate centroids only. Deterministic for a seed on a given device. Same code on CPU
and CUDA.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

_NEIGHBOURS = 32      # candidate clusters per row during refinement (measured: enough to converge)
_FLAT_CANDIDATES = 8  # candidates per row kept by flat (all-centroid) scoring


@dataclasses.dataclass
class Clustering:
    assignments: torch.Tensor  # [V] int64, cluster of each token
    centroids: torch.Tensor    # [K, d] float32, raw mean of each cluster's rows
    stats: dict


def capacities(vocab: int, cluster_size: int) -> torch.Tensor:
    """Rows each cluster must hold: `cs` everywhere except the last, which absorbs V % cs."""
    k = math.ceil(vocab / cluster_size)
    cap = torch.full((k,), cluster_size, dtype=torch.int64)
    cap[-1] = vocab - cluster_size * (k - 1)
    return cap


def balanced_assign(cand: torch.Tensor, cand_scores: torch.Tensor, capacity: torch.Tensor) -> torch.Tensor:
    """Capacity-constrained assignment by rounds of proposals.

    cand [N, c] candidate clusters per row (best first), cand_scores [N, c], capacity [K].
    Each round every unplaced row proposes to its next candidate; each cluster accepts its
    best-scoring proposals up to its remaining capacity. Returns assign [N] (-1: all candidates full).
    """
    n, c = cand.shape
    k = capacity.numel()
    dev = cand.device
    assign = torch.full((n,), -1, dtype=torch.int64, device=dev)
    ptr = torch.zeros(n, dtype=torch.int64, device=dev)
    remaining = capacity.clone()
    active = torch.arange(n, device=dev)
    for _ in range(c):
        if active.numel() == 0:
            break
        prop = cand[active, ptr[active]]
        score = cand_scores[active, ptr[active]]
        by_score = torch.argsort(score, descending=True, stable=True)
        idx = by_score[torch.argsort(prop[by_score], stable=True)]  # grouped by cluster, best first
        cl = prop[idx]
        counts = torch.bincount(cl, minlength=k)
        rank = torch.arange(cl.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[cl]
        ok = rank < remaining[cl]
        assign[active[idx[ok]]] = cl[ok]
        remaining -= torch.bincount(cl[ok], minlength=k)
        rejected = active[idx[~ok]]
        ptr[rejected] += 1
        active = rejected[ptr[rejected] < c]
    return assign


def _assign_leftovers(x, centroids, assign, capacity):
    """Place rows whose candidates were all full into the clusters that still have room."""
    for _ in range(4):
        left = torch.nonzero(assign < 0).squeeze(1)
        if left.numel() == 0:
            return assign
        room = capacity - torch.bincount(assign[assign >= 0], minlength=capacity.numel())
        open_ = torch.nonzero(room > 0).squeeze(1)
        c = min(open_.numel(), 64)
        scores = x[left] @ centroids[open_].T
        top = scores.topk(c, dim=1)
        sub = balanced_assign(top.indices, top.values, room[open_])
        placed = sub >= 0
        assign[left[placed]] = open_[sub[placed]]
    # Still unplaced (pathological ties): fill the open slots in order.
    left = torch.nonzero(assign < 0).squeeze(1)
    if left.numel():
        room = capacity - torch.bincount(assign[assign >= 0], minlength=capacity.numel())
        slots = torch.repeat_interleave(torch.arange(capacity.numel(), device=x.device), room)
        assign[left] = slots[: left.numel()]
    return assign


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _centroids(x, assign, k, metric, weights=None):
    """[K, d'] centroids to score rows against by dot product.

    cosine   : normalized sum of the (normalized) member rows.
    euclidean: x carries a trailing column of ones; the centroid is the members' (weighted) mean
               with its last column set to -|c|^2 / 2, so x . c = x_.c_ - |c_|^2 / 2 ranks clusters
               by distance.
    """
    xw = x if weights is None else x * weights.unsqueeze(1)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, assign, xw)
    if metric == "cosine":
        return _normalize(sums)
    c = sums / sums[:, -1:].clamp_min(1e-30)
    c[:, -1] = -0.5 * (c[:, :-1] ** 2).sum(1)
    return c


def _flat_kmeans(x, capacity, iterations, gen, metric, weights=None, chunk=16384):
    """Balanced k-means scoring every row against every centroid (small K only)."""
    k = capacity.numel()
    init = torch.randperm(x.shape[0], generator=gen)[:k].to(x.device)
    centroids = _centroids(x[init], torch.arange(k, device=x.device), k, metric)
    c = min(k, _FLAT_CANDIDATES)
    assign = None
    for _ in range(max(iterations, 1)):
        cand, cand_scores = [], []
        for s in range(0, x.shape[0], chunk):
            top = (x[s:s + chunk] @ centroids.T).topk(c, dim=1)
            cand.append(top.indices)
            cand_scores.append(top.values)
        assign = balanced_assign(torch.cat(cand), torch.cat(cand_scores), capacity)
        assign = _assign_leftovers(x, centroids, assign, capacity)
        centroids = _centroids(x, assign, k, metric, weights)
    return assign


def _members(assign, capacity, cluster_size):
    """[K, cs] row indices of each cluster's members, -1 where the last cluster is short."""
    k = capacity.numel()
    order = torch.argsort(assign, stable=True)
    cl = assign[order]
    start = torch.cumsum(capacity, 0) - capacity
    members = torch.full((k, cluster_size), -1, dtype=torch.int64, device=assign.device)
    members[cl, torch.arange(cl.numel(), device=assign.device) - start[cl]] = order
    return members


def _nearest_clusters(centroids, m, metric, chunk=2048):
    """[K, M] the M clusters nearest to each cluster (itself first)."""
    queries = centroids
    if metric == "euclidean":  # a centroid as a row: its mean with the trailing 1 (see _centroids)
        queries = torch.cat([centroids[:, :-1], torch.ones_like(centroids[:, -1:])], dim=1)
    out = []
    for s in range(0, centroids.shape[0], chunk):
        out.append((queries[s:s + chunk] @ centroids.T).topk(m, dim=1).indices)
    return torch.cat(out)


def _refine(x, assign, capacity, cluster_size, metric, weights=None, chunk=1024):
    """One round: each row re-chooses among the M nearest clusters of its current cluster."""
    k = capacity.numel()
    centroids = _centroids(x, assign, k, metric, weights)
    m = min(k, _NEIGHBOURS)
    nbr = _nearest_clusters(centroids, m, metric)                    # [K, M]
    members = _members(assign, capacity, cluster_size)         # [K, cs]
    rows, cand, cand_scores = [], [], []
    for s in range(0, k, chunk):
        mem = members[s:s + chunk]                             # [k', cs]
        xs = x[mem.clamp_min(0)]                               # [k', cs, d]
        cs_ = centroids[nbr[s:s + chunk]]                      # [k', M, d]
        sc = torch.bmm(xs, cs_.transpose(1, 2))                # [k', cs, M]
        cd = nbr[s:s + chunk].unsqueeze(1).expand(-1, cluster_size, -1)
        srt = sc.sort(dim=2, descending=True)
        keep = mem.reshape(-1) >= 0
        rows.append(mem.reshape(-1)[keep])
        cand.append(cd.gather(2, srt.indices).reshape(-1, m)[keep])
        cand_scores.append(srt.values.reshape(-1, m)[keep])
    rows = torch.cat(rows)
    new = torch.full_like(assign, -1)
    new[rows] = balanced_assign(torch.cat(cand), torch.cat(cand_scores), capacity)
    return _assign_leftovers(x, centroids, new, capacity)


def objective(x: torch.Tensor, assign: torch.Tensor, k: int, metric: str = "cosine",
              weights: torch.Tensor | None = None) -> float:
    """(Weighted) mean score of each row against its own centroid. Higher is better.

    cosine: mean cosine similarity; euclidean: -(mean squared distance to the centroid) / 2.
    """
    c = _centroids(x, assign, k, metric, weights)
    score = (x * c[assign]).sum(1)
    if metric == "euclidean":
        score = score - 0.5 * (x[:, :-1] ** 2).sum(1)
    if weights is None:
        return float(score.mean())
    return float((score * weights).sum() / weights.sum())


def balanced_kmeans(weight: torch.Tensor, cluster_size: int = 16, iterations: int = 8, seed: int = 0,
                    device: str | torch.device | None = None, progress: bool = True,
                    metric: str = "cosine", transform: torch.Tensor | None = None,
                    token_weights: torch.Tensor | None = None) -> Clustering:
    """Cluster the rows of `weight` [V, d] into ceil(V / cluster_size) clusters of equal size.

    metric "cosine" clusters the normalized rows (spherical k-means). metric "euclidean" clusters
    the rows mapped by `transform` [d, d'] (identity if None): with transform = Sigma^(1/2), where
    Sigma = E[h h^T] over the model's hidden states, the k-means objective is the expected squared
    error of the cluster-mean logit, E[(h . (w - mean))^2] (calibrate.query_transform).
    token_weights [V] > 0 (None: all 1) weight each row in the centroids, the returned stage-1
    centroids included: a cluster is then ranked by the logits of its likely tokens.
    """
    from tqdm.auto import tqdm

    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else weight.device
    w = weight.detach().to(device=device, dtype=torch.float32)
    v, d = w.shape
    x = w @ transform.to(device=device, dtype=torch.float32) if transform is not None else w
    if metric == "cosine":
        x = _normalize(x)
    else:
        x = torch.cat([x, torch.ones(v, 1, device=device)], dim=1)   # [V, d'+1], see _centroids
    cap = capacities(v, cluster_size).to(device)
    k = cap.numel()
    gen = torch.Generator().manual_seed(seed)
    tw = None if token_weights is None else token_weights.to(device=device, dtype=torch.float32)

    # Level 1: G groups, each holding a whole number of clusters.
    g = max(1, min(k, round(math.sqrt(k))))
    per_group = torch.full((g,), k // g, dtype=torch.int64)
    per_group[: k % g] += 1
    group_first = torch.cumsum(per_group, 0) - per_group        # first cluster id of each group
    cap_cpu = cap.cpu()
    group_cap = torch.stack([cap_cpu[f:f + n].sum() for f, n in zip(group_first.tolist(), per_group.tolist())])

    bar = tqdm(total=1 + g + iterations, desc="balanced k-means", unit="step", disable=not progress)
    group = _flat_kmeans(x, group_cap.to(device), 6, gen, metric, tw)
    bar.update(1)

    # Level 2: split each group into its clusters.
    assign = torch.empty(v, dtype=torch.int64, device=device)
    for gi in range(g):
        rows = torch.nonzero(group == gi).squeeze(1)
        first, n = int(group_first[gi]), int(per_group[gi])
        sub = _flat_kmeans(x[rows], cap[first:first + n], 6, gen, metric, None if tw is None else tw[rows])
        assign[rows] = sub + first
        bar.update(1)

    # the objective before and after refinement only: each evaluation costs a quarter of a round
    history = [objective(x, assign, k, metric, tw)]
    for _ in range(iterations):
        assign = _refine(x, assign, cap, cluster_size, metric, tw)
        bar.update(1)
    history.append(objective(x, assign, k, metric, tw))
    bar.set_postfix(objective=f"{history[-1]:.4f}")
    bar.close()

    rw = torch.ones(v, device=device) if tw is None else tw
    centroids = (torch.zeros(k, d, device=device).index_add_(0, assign, w * rw.unsqueeze(1))
                 / torch.zeros(k, device=device).index_add_(0, assign, rw).unsqueeze(1))
    counts = torch.bincount(assign, minlength=k)
    stats = {
        "vocab": v, "hidden": d, "clusters": k, "cluster_size": cluster_size,
        "objective": history[-1], "objective_history": history,
        "imbalance": int((counts - cap).abs().max()),
        "seconds": round(time.perf_counter() - t0, 2), "device": str(device), "metric": metric,
    }
    return Clustering(assign.cpu(), centroids.cpu(), stats)
