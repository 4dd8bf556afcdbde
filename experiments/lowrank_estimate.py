"""Unprobed tokens' logits from a cheap pass over every row, at equal bytes (issue 29, goal 3).

    python experiments/lowrank_estimate.py DIR [--domains prose legal german] [--positions 2048]
                                           [--ranks 16 32 64] [--json OUT]

Today's estimate of an unprobed token is its cluster's stage-1 score plus a per-token offset
(core/estimate.py). The alternative measured here reads a low-rank copy of the whole head each
step: W ~ A B (A [V, r], B [r, d], int8 with a scale per row, r (V + d) bytes), either of W itself
("lowrank") or of each row's difference from its cluster's mean row ("residual": h.m_k + h.(A B)_t).
The bytes are paid with fewer probes: P' is the largest probe count whose step plus the copy reads
no more than the default step at P (bf16 head, the build's int8 stage 1). Probed tokens keep their
exact logits, every estimate stays below the best exact one (as in the library), the context-aware
probes are on as in `flashhead eval`. Reported per domain against the dense head: mean KL
divergence, its 99th percentile, same top-1.

The SVD is of the head alone (no text): no domain is in-sample for it. DIR's build saw the suite's
calibration split; the domains are scored on their eval split (in-domain for the clusters unless
DIR was built without them).
"""
from __future__ import annotations

import argparse
import json

import torch

from flashhead.core import metrics
from flashhead.core.context import running
from flashhead.data.hidden import teacher_forced
from flashhead.integrations import hf
from flashhead.tools.evaluate import suite_texts


def int8_rows(x: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize with one scale per row (what reading int8 rows would give)."""
    scale = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
    return (x / scale).round().clamp(-127, 127) * scale


def bytes_fraction(head, p: int) -> float:
    return metrics.cost(head.vocab, head.hidden, head.num_clusters, head.cluster_size, p,
                        head.config.quantization, torch.bfloat16)["bytes_fraction"]


def equal_bytes_probes(head, p: int, extra: float) -> int:
    """The largest P' with bytes(P') + extra <= bytes(P) (fractions of the bf16 head)."""
    q = p
    while q > 1 and bytes_fraction(head, q) + extra > bytes_fraction(head, p):
        q -= 1
    return q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--domains", nargs="+", default=["prose", "legal", "german", "docs"])
    ap.add_argument("--positions", type=int, default=2048)
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(0)
    model, tok = hf.load(a.dir)
    lm = model.lm_head
    head = lm.flashhead
    W = lm.weight.detach().float()
    V, d = W.shape
    p0 = head.probes
    assign = head.assignments.cpu()
    k = head.num_clusters
    means = torch.zeros(k, d).index_add_(0, assign, W) / torch.bincount(assign, minlength=k).clamp_min(1).unsqueeze(1)
    resid = W - means[assign]
    variants = [("today", p0, None)]
    for r in a.ranks:
        extra = r * (V + d) / (2 * V * d)          # int8 copy, relative to the bf16 head
        q = equal_bytes_probes(head, p0, extra)
        variants.append((f"today at P'={q}", q, None))
        for kind, M in (("lowrank", W), ("residual", resid)):
            U, S, Vh = torch.linalg.svd(M, full_matrices=False)
            A, B = int8_rows(U[:, :r] * S[:r]), int8_rows(Vh[:r])
            variants.append((f"{kind} r={r} at P'={q}", q, (kind, A, B)))
    out = {"dir": a.dir, "probes": p0, "context_probes": head.context_probes, "positions": a.positions,
           "bytes_fraction_bf16": bytes_fraction(head, p0), "domains": {}}
    for dom in a.domains:
        texts = suite_texts(model, tok, dom, "eval")
        H, targets, x, first = teacher_forced(model, tok, texts, a.positions, inputs=True)
        ctx = running(head.assignments, k, x, first)
        dense = H @ W.T
        rows = []
        with head.flashhead_only():
            for name, p, est in variants:
                head.probes = p
                kl, agree = [], 0
                for s in range(0, H.shape[0], 128):
                    h, c = H[s:s + 128], ctx[s:s + 128]
                    scores, ids, z = head.probe(h, c)
                    if est is None:
                        logits = head.fill_logits(h, scores, ids, z)
                    else:
                        kind, A, B = est
                        e = (h @ B.T) @ A.T
                        if kind == "residual":
                            e += (h @ means.T)[:, assign]
                        best = z.amax(1, keepdim=True)
                        logits = torch.minimum(e, torch.nextafter(best, torch.full_like(best, -float("inf"))))
                        logits.scatter_(1, ids, z)
                    dn = dense[s:s + 128]
                    kl.append(metrics.kl_divergence(dn, logits))
                    agree += int((logits.argmax(1) == dn.argmax(1)).sum())
                kl = torch.cat(kl)
                rows.append({"variant": name, "probes": p, "kld": float(kl.mean()),
                             "kld_p99": float(kl.quantile(0.99)), "top1": agree / H.shape[0]})
                print(f"{dom:8s} {name:28s} KLD {rows[-1]['kld']:.4f} p99 {rows[-1]['kld_p99']:.3f} "
                      f"top-1 {100 * rows[-1]['top1']:.2f}%", flush=True)
        head.probes = p0
        out["domains"][dom] = {"positions": int(H.shape[0]), "rows": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
