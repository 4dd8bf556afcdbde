"""Fidelity experiments on cached hidden states (benchmarks/fidelity_data.py writes them).

A pure-torch model of FlashHead's decode step, close to head.py but with every knob exposed:
    stage 1   s = h . C_k (C: cluster means, optionally int8/int4) + alpha |h| sqrt(rho_k)
    probe     the P best clusters by s
    greedy    argmax of the exact logits of the probed tokens
    logits    probed: exact; unprobed: h . C_k + beta/2 |h|^2 rho_k (spread correction),
              clamped below the best exact logit (as FlashHead.forward)
rho_k = calibrate.weighted_spread (variance of member logits around the mean per unit |h|^2).
Metrics on held-out text (the "eval" split): greedy agreement with the dense argmax, recall of
the dense top-1, mean TV distance of the T=1 softmax to dense, perplexity ratio to dense, and
bytes_fraction = (stage-1 bytes at their stored size + P*cs*d rows) / (V*d), in --dtype.
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
             always=None, chunk=512):
    """-> {P: {agree, recall, tv, ppl_ratio}} on hidden states h [N, d], next tokens y [N]."""
    v, d = weight.shape
    k = int(assign.max()) + 1
    c = stage1_table(cluster_means(weight, assign, k), quantization)     # [K, d]
    rho = torch.zeros(k) if rho is None else rho
    acc = {p: torch.zeros(5, dtype=torch.float64) for p in probes}
    nll_dense = 0.0
    for s in range(0, h.shape[0], chunk):
        hc, yc = h[s:s + chunk].float(), y[s:s + chunk]
        n = hc.shape[0]
        dense = hc @ weight.T.float()                                  # [n, V]
        top1 = dense.argmax(1)
        logp_dense = dense.log_softmax(1)
        nll_dense += float(-logp_dense.gather(1, yc[:, None]).sum())
        p_dense = logp_dense.exp()
        base = hc @ c.T                                                # [n, K]
        hn2 = (hc * hc).sum(1, keepdim=True)
        score = base + alpha * hn2.sqrt() * rho.sqrt()
        est = (base + 0.5 * beta * hn2 * rho)[:, assign]               # [n, V]
        rank = torch.empty_like(score, dtype=torch.int64)
        rank.scatter_(1, score.argsort(1, descending=True), torch.arange(k).expand(n, k).contiguous())
        tok_rank = rank[:, assign]                                     # [n, V]
        if always is not None:
            tok_rank[:, always] = -1
        for p in probes:
            probed = tok_rank < p
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
                  "ppl_ratio": float(torch.exp((a[3] - nll_dense) / n)), "ppl_dense": float(torch.exp(torch.tensor(nll_dense) / n))}
    return out
