"""Directions measured for the build and not adopted (docs/FIDELITY.md, "Measured, not adopted").

    python benchmarks/fidelity_data.py smollm2-135m     # once: cached hidden states
    python benchmarks/fidelity_ablations.py [smollm2-135m]

Each row changes one thing against the default build (build.fit_index on 12,288 calibration
positions, cluster size 16, int8 stage 1) and is scored by fidelity_lab.evaluate (a pure-torch
model of the step with every knob exposed) on 8,192 held-out positions of the fortunes eval split.
"""
from __future__ import annotations

import sys
import time

import torch

sys.path.insert(0, "benchmarks")

FIT = 12288


def main():
    import fidelity_lab as lab
    from flashhead import FlashHeadConfig, balanced_kmeans
    from flashhead.build import fit_index
    from flashhead.calibrate import Calibration, query_transform, token_weights

    model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    torch.set_num_threads(2)
    data = lab.load(model)
    w, h, y = data["head"], data["eval_h"], data["eval_y"]
    v, d = w.shape
    cal = Calibration.from_hidden(w, data["cal_h"][:FIT])
    tw = token_weights(cal.usage)
    index = fit_index(w, data["cal_h"][:FIT], FlashHeadConfig())
    assign, rho = index.assignments, index.spread
    probes = [256, 288, 384]
    print("| change | P | bytes (bf16) | agreement | TV (T=1) | ppl ratio |\n|---|---:|---:|---:|---:|---:|")

    def row(name, res, k=v // 16, cs=16, quant="int8", extra=0):
        for p, r in res.items():
            bf = lab.bytes_fraction(v, d, k, cs, p, quant) + extra / (v * d * 2)
            print(f"| {name} | {p} | {bf:.3f} | {r['agree']:.4f} | {r['tv']:.4f} | {r['ppl_ratio']:.3f} |", flush=True)

    base = dict(weights=tw, est_from_stage1=True)
    row("default build", lab.evaluate(w, h, y, assign, probes, "int8", **base))
    row("+ radius term in stage 1 (alpha = 1)", lab.evaluate(w, h, y, assign, probes, "int8", alpha=1.0, rho=rho, **base),
        extra=4 * (v // 16))
    for beta in (0.5, 1.0):
        row(f"+ spread correction of the estimate (beta = {beta})",
            lab.evaluate(w, h, y, assign, probes, "int8", beta=beta, rho=rho, **base))
    evals, evecs = torch.linalg.eigh(cal.sigma.double())
    for r in (4, 16, 64):
        u = evecs[:, -r:].float()
        delta = w - lab.cluster_means(w, assign, v // 16)[assign]
        row(f"+ rank-{r} residual in the estimate", lab.evaluate(w, h, y, assign, probes, "int8",
                                                               lowrank=(u, delta @ u), **base), extra=v * r * 2)
    row("stage-1 vectors: plain means", lab.evaluate(w, h, y, assign, probes, "int8"))
    row("stage 1 unquantized", lab.evaluate(w, h, y, assign, probes, "none", **base), quant="none")
    t = time.time()
    c = balanced_kmeans(w, 16, 24, progress=False, metric="euclidean", transform=query_transform(cal.sigma_dir),
                        token_weights=tw)
    row(f"24 k-means rounds instead of 8 ({time.time() - t:.0f} s)", lab.evaluate(w, h, y, c.assignments, probes, "int8", **base))
    for seed in (1, 2):
        c = balanced_kmeans(w, 16, 8, seed=seed, progress=False, metric="euclidean",
                            transform=query_transform(cal.sigma_dir), token_weights=tw)
        row(f"seed {seed} instead of 0", lab.evaluate(w, h, y, c.assignments, probes, "int8", **base))
    for cs, quant, ps in ((8, "int8", [384, 512]), (8, "int4", [512, 576]), (32, "int8", [128, 144])):
        c = balanced_kmeans(w, cs, 8, progress=False, metric="euclidean", transform=query_transform(cal.sigma_dir),
                            token_weights=tw)
        row(f"cluster size {cs}, {quant} stage 1", lab.evaluate(w, h, y, c.assignments, ps, quant, **base),
            k=-(-v // cs), cs=cs, quant=quant)
    usage_self = Calibration.from_hidden(w, data["self_h"][:FIT])
    c = balanced_kmeans(w, 16, 8, progress=False, metric="euclidean", transform=query_transform(usage_self.sigma_dir),
                        token_weights=token_weights(usage_self.usage))
    row("calibrated on the model's own samples", lab.evaluate(w, h, y, c.assignments, probes, "int8",
                                                             weights=token_weights(usage_self.usage), est_from_stage1=True))
    docs = Calibration.from_hidden(w, data["docs_h"][:FIT])
    c = balanced_kmeans(w, 16, 8, progress=False, metric="euclidean", transform=query_transform(docs.sigma_dir),
                        token_weights=token_weights(docs.usage))
    row("calibrated on Python's documentation", lab.evaluate(w, h, y, c.assignments, probes, "int8",
                                                             weights=token_weights(docs.usage), est_from_stage1=True))


if __name__ == "__main__":
    main()
