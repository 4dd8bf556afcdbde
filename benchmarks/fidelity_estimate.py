"""The full-vocabulary estimate (src/flashhead/estimate.py): what the per-token offsets buy, and
how far any cluster-level estimate can go.

    python benchmarks/fidelity_data.py MODEL           # once per model: cached hidden states
    python benchmarks/fidelity_estimate.py smollm2-135m [gemma-3-270m]

The index is fitted as `flashhead build` fits it (build.fit_index: 12,288 calibration positions,
probes and offsets chosen on the held-out quarter), then scored on 4,096 eval positions at several
probe counts with the built offsets and with none. The last column is an oracle no head can
have: every unprobed token gets the exact log-mean-exp of its cluster's logits (the cluster's true
mass, spread evenly over its members): the best that one number per unprobed cluster can do.
"""
from __future__ import annotations

import math
import sys

import torch

sys.path.insert(0, "benchmarks")

PROBES = {"smollm2-135m": [288, 357, 512, 1024], "gemma-3-270m": [512, 1024]}
EVAL = 4096


def oracle_ppl_ratio(head, weight, h, y, probes, chunk=256):
    """Perplexity ratio to dense when unprobed tokens get their cluster's exact mean mass."""
    k, a = head.num_clusters, head.assignments
    count = torch.bincount(a, minlength=k).float()
    gap = 0.0
    for s in range(0, h.shape[0], chunk):
        x, t = h[s:s + chunk], y[s:s + chunk]
        z = x @ weight.T
        m = z.amax(1, keepdim=True)
        lme = (torch.zeros(x.shape[0], k).index_add_(1, a, (z - m).exp()) / count).log() + m
        top = head.scores(x).topk(probes, 1).indices
        probed = torch.zeros(x.shape[0], k, dtype=torch.bool).scatter_(1, top, True)[:, a]
        q = torch.where(probed, z, lme[:, a])
        gap += float((torch.nn.functional.cross_entropy(q, t, reduction="sum")
                      - torch.nn.functional.cross_entropy(z, t, reduction="sum")))
    return math.exp(gap / h.shape[0])


def main():
    from fidelity_lab import load
    from flashhead import FlashHead, FlashHeadConfig
    from flashhead.build import fit_index
    from flashhead.evaluate import evaluate_hidden

    torch.set_num_threads(2)
    print("| model | P | bytes (bf16) | agreement | TV, offsets / none | ppl ratio, offsets / none | ppl ratio, cluster-mass oracle |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model in sys.argv[1:] or ["smollm2-135m"]:
        data = load(model)
        w, cal = data["head"], data["cal_h"]
        h, y = data["eval_h"][:EVAL], data["eval_y"][:EVAL]
        head = FlashHead(w, fit_index(w, cal[:12288], FlashHeadConfig(), held_out=cal[12288:]))
        built = evaluate_hidden(head, w, h, y, PROBES[model])
        with head.flashhead_only(offsets=False):
            plain = evaluate_hidden(head, w, h, y, PROBES[model])
        for b, p in zip(built, plain):
            ratio = [r["ppl_flashhead"] / r["ppl_dense"] for r in (b, p)]
            print(f"| {model} | {b['probes']} | {b['bytes_fraction_bf16']:.3f} | {b['top1_agreement']:.4f} | "
                  f"{b['tv_distance']:.4f} / {p['tv_distance']:.4f} | {ratio[0]:.3f} / {ratio[1]:.3f} | "
                  f"{oracle_ppl_ratio(head, w, h, y, b['probes']):.3f} |", flush=True)


if __name__ == "__main__":
    main()
