"""What a certified confidence check would cost (issue 11's "certified bounds in the spirit of
CSV-Decode"): a step is certified when the best exact logit among the probed clusters' tokens is at
least an upper bound of every unprobed token's logit; an uncertified step would need the dense head.

    python experiments/certified_bound.py MODEL --domain legal [--eval-positions 2048]

The build is the leave-one-domain-out build of suite_lab.py (calibrated on every source but the
domain; cached states of experiments/suite_data.py), scored on the domain's eval positions at its
default probes. Bound for an unprobed cluster k of stage-1 vector c_k (fp32) and token rows w_t:
    h.w_t = h.c_k + (A^-T h).(A (w_t - c_k)) <= h.c_k + |A^-T h| * max_t |A (w_t - c_k)|
for any invertible A (Cauchy-Schwarz): A = I (`euclid`) and A = S^(1/2), S the second moment of the
calibration states, regularised (`metric`). Prints the certified share of steps, the share of the
dense top-1 misses among the uncertified steps, and the mean bytes read (bf16, per step) if every
uncertified step read the dense head as well.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch



def bounds(w: torch.Tensor, assign: torch.Tensor, c: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    """[K]: max over each cluster's tokens of |A (w_t - c_k)| (A = I when a is None)."""
    r = w - c[assign]
    if a is not None:
        r = r @ a.T
    return torch.zeros(c.shape[0]).scatter_reduce(0, assign, r.norm(dim=1), "amax", include_self=True)


def main():
    from suite_data import load
    from suite_lab import fitted

    from flashhead import FlashHead
    from flashhead.build.calibrate import query_transform, second_moment
    from flashhead.data.corpus import DOMAINS
    from flashhead.core.metrics import cost

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--domain", required=True)
    p.add_argument("--eval-positions", type=int, default=2048)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("FLASHHEAD_THREADS", "2")))
    data = load(a.model)
    if f"{a.domain}/eval_h" not in data:
        raise SystemExit(f"no eval states of {a.domain!r} for {a.model}: run experiments/suite_data.py first")
    w = data["head"].float()
    sources = [d for d in DOMAINS if f"{d}/cal_h" in data and d != a.domain] + ["self"]
    index, held = fitted(a.model, data, sources)
    head = FlashHead(data["head"], index)
    h = data[f"{a.domain}/eval_h"][:a.eval_positions].float()
    c, assign, P = index.centroids.float(), index.assignments, head.probes

    # the metric: the calibration states' second moment, shrunk a little toward the identity so
    # that A^-1 exists
    half = query_transform(second_moment(held), shrink=0.1)
    inv_half = torch.linalg.inv(half.double()).float()
    radius = {"euclid": bounds(w, assign, c, None), "metric": bounds(w, assign, c, half)}
    qnorm = {"euclid": h.norm(dim=1), "metric": (h @ inv_half).norm(dim=1)}

    logits = h @ w.T
    top1 = logits.argmax(1)
    scores = head.scores(h.to(data["head"].dtype))                     # the kernel's ranking
    probed = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(P, dim=1).indices, True)
    tok_probed = probed.gather(1, assign.expand(h.shape[0], -1))        # [N, V]
    best_exact = logits.masked_fill(~tok_probed, float("-inf")).max(1).values
    miss = ~tok_probed.gather(1, top1[:, None]).squeeze(1)
    exact_c = h @ c.T                                                   # fp32 h.c_k
    base = cost(*w.shape, head.num_clusters, head.cluster_size, P, index.config.quantization,
                torch.bfloat16)["bytes_fraction"]
    out = {"model": a.model, "domain": a.domain, "probes": P, "positions": h.shape[0],
           "misses": int(miss.sum()), "bytes_at_P": round(base, 4)}
    for name in radius:
        ub = (exact_c + qnorm[name][:, None] * radius[name][None, :]).masked_fill(probed, float("-inf")).max(1).values
        cert = best_exact >= ub
        out[name] = {"certified": round(float(cert.float().mean()), 4),
                     "misses_uncertified": int((miss & ~cert).sum()),
                     "mean_bytes_with_dense_fallback": round(base + float((~cert).float().mean()), 4),
                     "median_gap": round(float((ub - best_exact).median()), 3)}
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
