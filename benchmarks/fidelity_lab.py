"""Fidelity experiments on cached hidden states (benchmarks/fidelity_data.py writes them).

A pure-torch model of FlashHead's decode step with every knob exposed, scored on held-out text:
    stage 1   s_k = h . C_k (C: cluster means, optionally int8/int4) + alpha |h| sqrt(rho_k)
    probe     the P best clusters by s (plus `always` clusters, probed every step)
    greedy    argmax of the exact logits of the probed tokens
    logits    probed: exact; unprobed token j of cluster k: h . C_k + beta/2 |h|^2 rho_k
              (+ (U^T h) . E_j with a rank-r residual table, `lowrank=(U, E)`), clamped below the
              best exact logit (as FlashHead.forward)
Metrics: greedy agreement with the dense argmax, recall of the dense top-1, mean TV distance of
the T=1 softmax to dense, perplexity ratio to dense, and bytes_fraction = (stage-1 bytes at their
stored size + P*cs*d rows) / (V*d), in --dtype.
"""
from __future__ import annotations

import torch

from flashhead.quant import BITS, dequantize_rows, quantize_rows, stored_bytes


def load(model: str):
    from safetensors.torch import load_file
    import fidelity_data
    return load_file(str(fidelity_data.out_path(model)))


def cluster_means(weight, assign, k):
    count = torch.bincount(assign, minlength=k).clamp_min(1).unsqueeze(1).float()
    return torch.zeros(k, weight.shape[1]).index_add_(0, assign, weight.float()) / count


def weighted_means(weight, assign, k, w):
    den = torch.zeros(k).index_add_(0, assign, w).unsqueeze(1)
    return torch.zeros(k, weight.shape[1]).index_add_(0, assign, weight.float() * w[:, None]) / den


def stage1_table(means, quantization):
    bits = BITS[quantization]
    if bits is None:
        return means
    return dequantize_rows(*quantize_rows(means, bits), bits)


def bytes_fraction(v, d, k, cs, p, quantization, dtype=torch.bfloat16, per_cluster_scalars=0):
    el = torch.empty((), dtype=dtype).element_size()
    return (stored_bytes(k, d, quantization, dtype) + k * 4 * per_cluster_scalars + p * cs * d * el) / (v * d * el)


@torch.inference_mode()
def evaluate(weight, h, y, assign, probes, quantization="none", alpha=0.0, beta=0.0, rho=None,
             always=None, lowrank=None, weights=None, est_from_stage1=False, chunk=256):
    """-> {P: {agree, recall, tv, ppl_ratio, ppl_dense}} on hidden states h [N, d], next tokens y [N].

    always: cluster ids probed at every step on top of the P best (bytes not included in P).
    weights [V]: stage-1 vectors are the weighted means of the members (the estimate of an
    unprobed token stays the plain mean).
    """
    v, d = weight.shape
    k = int(assign.max()) + 1
    mean = cluster_means(weight, assign, k)                            # [K, d]
    c = stage1_table(mean if weights is None else weighted_means(weight, assign, k, weights), quantization)
    rho = torch.zeros(k) if rho is None else rho
    acc = {p: torch.zeros(5, dtype=torch.float64) for p in probes}
    nll_dense = 0.0
    wt = weight.T.float().contiguous()
    for s in range(0, h.shape[0], chunk):
        hc, yc = h[s:s + chunk].float(), y[s:s + chunk]
        n = hc.shape[0]
        dense = hc @ wt                                                # [n, V]
        top1 = dense.argmax(1)
        logp_dense = dense.log_softmax(1)
        nll_dense += float(-logp_dense.gather(1, yc[:, None]).sum())
        p_dense = logp_dense.exp()
        base = hc @ c.T                                                # [n, K]
        hn2 = (hc * hc).sum(1, keepdim=True)
        score = base + alpha * hn2.sqrt() * rho.sqrt()
        if weights is not None and not est_from_stage1:
            base = hc @ mean.T
        if always is not None:
            score[:, always] = float("inf")
        est = (base + 0.5 * beta * hn2 * rho)[:, assign]               # [n, V]
        if lowrank is not None:
            u, e = lowrank
            est += (hc @ u) @ e.T
        rank = torch.empty_like(score, dtype=torch.int32)
        rank.scatter_(1, score.argsort(1, descending=True).int(),
                      torch.arange(k, dtype=torch.int32).expand(n, k).contiguous())
        tok_rank = rank[:, assign]                                     # [n, V]
        n_always = 0 if always is None else len(always)
        for p in probes:
            probed = tok_rank < p + n_always
            exact = dense.masked_fill(~probed, float("-inf"))
            best = exact.max(1, keepdim=True)
            agree = best.indices.squeeze(1) == top1
            recall = probed.gather(1, top1[:, None]).squeeze(1)
            cap = torch.nextafter(best.values, torch.full_like(best.values, float("-inf")))
            q = torch.where(probed, dense, torch.minimum(est, cap))
            logq = q.log_softmax(1)
            tv = 0.5 * (logq.exp() - p_dense).abs().sum(1)
            nll = -logq.gather(1, yc[:, None]).squeeze(1)
            acc[p] += torch.tensor([agree.sum(), recall.sum(), tv.sum(), nll.sum(), n], dtype=torch.float64)
    out = {}
    for p, a in acc.items():
        n = a[4]
        out[p] = {"agree": float(a[0] / n), "recall": float(a[1] / n), "tv": float(a[2] / n),
                  "ppl_ratio": float(torch.exp((a[3] - nll_dense) / n)),
                  "ppl_dense": float(torch.exp(torch.tensor(nll_dense) / n))}
    return out


def show(name, res, v, d, k, cs, quantization="int8", extra_bytes=0):
    for p, r in res.items():
        bf = bytes_fraction(v, d, k, cs, p, quantization) + extra_bytes / (v * d * 2)
        print(f"{name:28s} P={p:5d} bf={bf:.4f} agree={r['agree']:.4f} recall={r['recall']:.4f} "
              f"tv={r['tv']:.4f} ppl={r['ppl_ratio']:.3f}", flush=True)
