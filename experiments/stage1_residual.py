"""Measured, not adopted: a per-token residual code in stage 1 (docs/FIDELITY.md).

    python experiments/stage1_residual.py smollm2-135m --domains russian legal

Stage 1 scores each cluster by its centroid. Here each token also carries a product-quantized code
of its residual (row minus its cluster's centroid; M subspaces, 16 codewords each: 4 bits per
subspace, M/2 bytes per token), a cluster's score is its best member's approximate logit, and an
unprobed token's estimate is its own approximate logit (below the best exact one). The codes are
paid for with fewer probes at equal bytes (bf16). Each build is the leave-one-out build of
experiments/suite_lab.py (cached): calibrated without the domain it is scored on. fp32 math
throughout (no kernel: this measures the signal, not the speed).
"""
from __future__ import annotations

import argparse
import os

import torch



def pq_fit(x: torch.Tensor, m: int, k: int = 16, iters: int = 12, seed: int = 0):
    """Codes [V, m] and codebooks [m, k, d/m] of x [V, d] (plain k-means per subspace)."""
    sub = x.shape[1] // m
    g = torch.Generator().manual_seed(seed)
    codes, books = [], []
    for j in range(m):
        xs = x[:, j * sub:(j + 1) * sub]
        cb = xs[torch.randperm(xs.shape[0], generator=g)[:k]].clone()
        for _ in range(iters):
            a = torch.cdist(xs, cb).argmin(1)
            for c in range(k):
                sel = xs[a == c]
                if sel.numel():
                    cb[c] = sel.mean(0)
        codes.append(torch.cdist(xs, cb).argmin(1))
        books.append(cb)
    return torch.stack(codes, 1), torch.stack(books)


def pq_scores(h: torch.Tensor, codes: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    m, k, sub = books.shape
    t = torch.einsum("nms,mks->nmk", h[:, : m * sub].reshape(h.shape[0], m, sub), books)
    out = torch.zeros(h.shape[0], codes.shape[0])
    for j in range(m):
        out += t[:, j, codes[:, j]]
    return out


def score(w, centroids, assignments, h, probes, code=None, chunk=256):
    """Greedy agreement and TV (T = 1) of the variant on h [N, d]."""
    k = centroids.shape[0]
    hits, tv = 0, 0.0
    for s in range(0, h.shape[0], chunk):
        x = h[s:s + chunk]
        n = x.shape[0]
        z = x @ w.T
        cs = x @ centroids.T
        approx = cs[:, assignments]
        if code is None:
            cluster = cs
        else:
            approx = approx + pq_scores(x, *code)
            cluster = torch.full((n, k), -torch.inf).scatter_reduce(1, assignments.expand(n, -1), approx, "amax")
        top = cluster.topk(probes, 1).indices
        probed = torch.zeros(n, k, dtype=torch.bool).scatter_(1, top, True)[:, assignments]
        best = z.masked_fill(~probed, -torch.inf).amax(1, keepdim=True)
        est = torch.where(probed, z, torch.minimum(approx, best - 1e-3))
        hits += int((est.argmax(1) == z.argmax(1)).sum())
        tv += float(0.5 * (z.softmax(1) - est.softmax(1)).abs().sum())
    return hits / h.shape[0], tv / h.shape[0]


def main():
    from suite_data import load
    from suite_lab import fitted

    from flashhead.data.corpus import DOMAINS

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--domains", nargs="+", default=["russian", "legal"])
    p.add_argument("--subspaces", nargs="+", type=int, default=[48, 72])
    p.add_argument("--eval-positions", type=int, default=2048)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("FLASHHEAD_THREADS", "2")))
    data = load(a.model)
    w = data["head"].float()
    v, d = w.shape
    everything = [x for x in DOMAINS if f"{x}/cal_h" in data] + ["self"]
    for dom in a.domains:
        index, _ = fitted(a.model, data, [s for s in everything if s != dom])
        c, asg = index.centroids.float(), index.assignments.long()
        k = c.shape[0]
        h = data[f"{dom}/eval_h"][: a.eval_positions].float()
        stage1 = k * d                                    # int8 centroids
        variants = [("centroids", None, stage1)]
        for m in a.subspaces:
            variants.append((f"+ residual PQ {m}x4 bit", pq_fit(w - c[asg], m), stage1 + v * m // 2))
        for name, code, s1 in variants:
            probes = max(q for q in range(1, k) if (s1 + q * 16 * d * 2) / (v * d * 2) <= 0.125)
            agree, tv = score(w, c, asg, h, probes, code)
            print(f"{a.model} without {dom}, on {dom}: {name:>24}  P = {probes:4d}  agreement {agree:.2%}  "
                  f"TV {tv:.4f}", flush=True)


if __name__ == "__main__":
    main()
