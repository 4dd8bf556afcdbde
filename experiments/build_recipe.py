"""The build's speed-ups against its fidelity: clusterings fitted with different refinement rounds
and usage sample sizes on the same cached calibration states (experiments/suite_data.py), scored by
the greedy agreement every probe count reaches on every domain's eval documents (in-domain: the
default calibration covers every domain's calibration documents).

    python experiments/build_recipe.py gemma-3-270m --variants 8:all 4:4096 8:4096 --probes 1093 1224 1312
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch



def main():
    from suite_data import load
    from suite_lab import calibration

    from flashhead.build import calibrate
    from flashhead.build.calibrate import Calibration, query_transform, token_weights
    from flashhead.build.clustering import balanced_kmeans
    from flashhead.core.config import FlashHeadConfig
    from flashhead.data.corpus import DOMAINS, SUITE
    from flashhead.build.fit import dense_top1_rank
    from flashhead.core.head import FlashHead
    from flashhead.core.index import ClusterIndex, fingerprint

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--variants", nargs="+", default=["8:all", "4:4096"],
                   help="ROUNDS:USAGE_POSITIONS ('all': every fit position)")
    p.add_argument("--probes", nargs="+", type=int, required=True)
    p.add_argument("--eval-positions", type=int, default=2048)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("FLASHHEAD_THREADS", "2")))
    data = load(a.model)
    w = data["head"]
    suite = [d for d in SUITE if f"{d}/eval_h" in data]
    everything = [d for d in DOMAINS if f"{d}/cal_h" in data] + ["self"]
    fit, held = calibration(data, everything)
    rows = []
    for v in a.variants:
        rounds, usage = v.split(":")
        calibrate.USAGE_LOGITS = (fit.shape[0] if usage == "all" else int(usage)) * w.shape[0]
        t = time.time()
        cal = Calibration.from_hidden(w, fit)
        c = balanced_kmeans(w, 16, int(rounds), 0, progress=False, metric="euclidean",
                            transform=query_transform(cal.sigma_dir), token_weights=token_weights(cal.usage))
        seconds = round(time.time() - t, 1)
        index = ClusterIndex(FlashHeadConfig(iterations=int(rounds)), c.assignments, c.centroids, fingerprint(w))
        head = FlashHead(w, index, probes=1)
        for dom in ["held-out"] + suite:
            hs = held if dom == "held-out" else data[f"{dom}/eval_h"][: a.eval_positions]
            ranks = dense_top1_rank(head, hs, w)
            agree = {p_: round(float((ranks < p_).float().mean()), 5) for p_ in a.probes}
            rows.append({"variant": v, "domain": dom, "seconds": seconds, "agreement": agree})
            print(f"{v:>8} {dom:>9} fit {seconds:6.1f}s " + " ".join(f"P={k}: {x:.4f}" for k, x in agree.items()), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
