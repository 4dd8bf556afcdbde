"""Fidelity before/after each accepted build change, as Pareto fronts (agreement, TV vs bytes).

    python benchmarks/fidelity_data.py MODEL           # once per model: cached hidden states
    python benchmarks/fidelity_pareto.py smollm2-135m gemma-3-270m

Variants (cluster size 16, int8 stage 1, 8 k-means rounds, the real FlashHead step):
    cosine            spherical balanced k-means, plain cluster means: the paper's recipe (before)
    +metric           k-means on W sigma_dir^(1/2), calibrated on the fortunes calibration split
    +usage (default)  and usage-weighted stage-1 vectors and the estimate's per-token offsets:
                      build.fit_index with a held-out quarter, what `flashhead build` does
    self-calibrated   the same on the model's own samples instead of real text
Scored on 4,096 held-out positions of the fortunes eval split (never used to build); agreement
also on Python's own documentation (pydoc topics: another domain, never used to build).
bytes = stage-1 int8 table + P*16 head rows, relative to the dense head, both counted in bf16.
Writes docs/bench/fidelity-MODEL.json and docs/img/fidelity-MODEL.png; prints Markdown tables.
"""
from __future__ import annotations

import json
import sys
import time

import torch

sys.path.insert(0, "benchmarks")

PROBES = {"smollm2-135m": [64, 96, 128, 192, 256, 288, 384, 512, 768, 1024],
          "gemma-3-270m": [64, 128, 256, 384, 512, 768, 1024, 1536, 2048]}
TV_PROBES = {"smollm2-135m": [128, 288, 512], "gemma-3-270m": [256, 512, 1024]}
FIT = 12288          # calibration positions, as the build (16,384 less the held-out quarter)
EVAL = 4096


def variants(weight, data, config):
    from flashhead import ClusterIndex, balanced_kmeans
    from flashhead.build import fit_index
    from flashhead.calibrate import Calibration, query_transform
    from flashhead.index import fingerprint

    fp = fingerprint(weight)
    c = balanced_kmeans(weight, 16, config.iterations, config.seed, progress=False)
    yield "cosine", ClusterIndex(config, c.assignments, c.centroids, c.spread, fp)
    cal = Calibration.from_hidden(weight, data["cal_h"][:FIT])
    c = balanced_kmeans(weight, 16, config.iterations, config.seed, progress=False, metric="euclidean",
                        transform=query_transform(cal.sigma_dir))
    yield "+metric", ClusterIndex(config, c.assignments, c.centroids, c.spread, fp)
    yield "+usage (default)", fit_index(weight, data["cal_h"][:FIT], config, held_out=data["cal_h"][FIT:])
    yield "self-calibrated", fit_index(weight, data["self_h"][:FIT], config, held_out=data["self_h"][FIT:])


def measure(model: str) -> dict:
    from fidelity_lab import load
    from flashhead import FlashHead, FlashHeadConfig, metrics
    from flashhead.evaluate import dense_top1_rank, evaluate_hidden

    data = load(model)
    weight = data["head"]
    v, d = weight.shape
    config = FlashHeadConfig()
    h, y, docs = data["eval_h"][:EVAL], data["eval_y"][:EVAL], data["docs_h"][:EVAL]
    out = {"model": model, "positions": EVAL, "variants": {}}
    for name, index in variants(weight, data, config):
        t = time.time()
        head = FlashHead(weight, index)
        ranks, ranks_docs = dense_top1_rank(head, h, weight), dense_top1_rank(head, docs, weight)
        rows = [{"probes": p, "agreement": float((ranks < p).float().mean()),
                 "agreement_docs": float((ranks_docs < p).float().mean()),
                 "bytes_fraction_bf16": metrics.cost(v, d, head.num_clusters, 16, p, "int8",
                                                     torch.bfloat16)["bytes_fraction"]}
                for p in PROBES[model]]
        for r in evaluate_hidden(head, weight, h, y, TV_PROBES[model]):
            row = next(x for x in rows if x["probes"] == r["probes"])
            row.update(tv=r["tv_distance"], ppl_ratio=r["ppl_flashhead"] / r["ppl_dense"])
        out["variants"][name] = rows
        print(f"{model} {name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    return out


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in result["variants"].items():
        x = [r["bytes_fraction_bf16"] for r in rows]
        axes[0].plot(x, [r["agreement"] for r in rows], "o-", label=name, markersize=3)
        tv = [r for r in rows if "tv" in r]
        axes[1].plot([r["bytes_fraction_bf16"] for r in tv], [r["tv"] for r in tv], "o-", label=name)
    axes[0].axhline(0.995, color="gray", ls=":")
    axes[1].axhline(0.03, color="gray", ls=":")
    for ax, label in ((axes[0], "greedy top-1 agreement"), (axes[1], "TV distance to dense (T=1)")):
        ax.axvline(0.125, color="gray", ls=":")
        ax.set_xlabel("bytes read per step / dense head (bf16)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylim(0.95, 1.0)
    fig.suptitle(f"{result['model']}: {result['positions']} held-out positions (fortunes eval split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    lines = [f"### {result['model']}\n", "| variant | P | bytes (bf16) | agreement | agreement, Python docs | TV (T=1) | ppl ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, rows in result["variants"].items():
        for r in rows:
            if "tv" in r:
                lines.append(f"| {name} | {r['probes']} | {r['bytes_fraction_bf16']:.3f} | {r['agreement']:.4f} | "
                             f"{r['agreement_docs']:.4f} | {r['tv']:.4f} | {r['ppl_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    torch.set_num_threads(2)
    for model in sys.argv[1:] or ["smollm2-135m", "gemma-3-270m"]:
        result = measure(model)
        with open(f"docs/bench/fidelity-{model}.json", "w") as f:
            json.dump(result, f, indent=1)
        plot(result, f"docs/img/fidelity-{model}.png")
        print(table(result), flush=True)


if __name__ == "__main__":
    main()
