"""Next clusters on the languages check: how many per token a step should add.

    python experiments/next_clusters.py DIR [--counts 0 8 16 32] [--langs vi id ja] [--json OUT]

DIR: a default FlashHead build (`flashhead build gemma-3-270m -o DIR`). For every token of the
languages check's texts, the dense head's best tokens at the model's state after [BOS, x] and their
clusters, exactly as `flashhead upgrade DIR --next-clusters` stores them (build/successors.py
`next_tokens` and `clusters_of`, for these tokens only: minutes instead of the whole vocabulary's
table). Then, teacher-forced as `flashhead eval DIR --languages` scores (P and E the build's), the
greedy agreement and KL divergence against the dense head when a step's context also holds the
first m of the clusters of the token it read, for every m in `--counts` (0: the context alone).
Findings: docs/FIDELITY.md, "Next clusters", and build/successors.py.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flashhead.build.successors import clusters_of, next_tokens
from flashhead.data import languages
from flashhead.data.hidden import teacher_forced
from flashhead.integrations import hf
from flashhead.tools.bench import machine
from flashhead.tools.evaluate import evaluate_hidden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--counts", nargs="+", type=int, default=[0, 8, 16, 32])
    ap.add_argument("--langs", nargs="+", default=list(languages.LANGUAGES))
    ap.add_argument("--max-positions", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    lm, tok = hf.load(a.dir)
    head = lm.lm_head.flashhead
    data = {g: teacher_forced(lm, tok, languages.texts(g), a.max_positions, 512, inputs=True) for g in a.langs}
    xs = torch.unique(torch.cat([d[2] for d in data.values()]))
    t0 = time.perf_counter()
    table = torch.zeros(head.vocab, max(a.counts), dtype=torch.int64)   # rows of tokens not in the texts: never read
    table[xs] = clusters_of(next_tokens(lm, tok, ids=xs), head.assignments, max(a.counts))
    seconds = time.perf_counter() - t0
    print(f"next clusters of {xs.numel()} tokens: {seconds:.0f} s", flush=True)
    head.successors = table
    res = {}
    for g, (H, y, x, first) in data.items():
        res[g] = {"positions": int(H.shape[0])}
        for m in a.counts:
            head.next_clusters = m
            r = evaluate_hidden(head, lm.lm_head.weight.detach(), H, y, [head.probes], inputs=(x, first))[0]
            res[g][str(m)] = {k: r[k] for k in ("top1_agreement", "kld_mean", "kld_p99")}
        print(g, " ".join(f"m={m} {res[g][str(m)]['top1_agreement']:.2%}/{res[g][str(m)]['kld_mean']:.3f}"
                          for m in a.counts), flush=True)
    summary = {}
    for m in a.counts:
        v = [r[str(m)]["top1_agreement"] for r in res.values()]
        k = [r[str(m)]["kld_mean"] for r in res.values()]
        summary[str(m)] = {"worst": min(v), "mean": sum(v) / len(v), "kld_mean": sum(k) / len(k), "kld_worst": max(k)}
        print(f"m={m}: worst {min(v):.2%} mean {sum(v) / len(v):.2%} KLD mean {sum(k) / len(k):.3f} worst {max(k):.3f}")
    if a.json:
        a.json.write_text(json.dumps({"probes": head.probes, "context_probes": head.context_probes,
                                      "tokens": int(xs.numel()), "table_seconds": round(seconds, 1),
                                      "languages": res, "summary": summary, "machine": machine()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
