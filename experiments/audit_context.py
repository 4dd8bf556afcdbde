"""Does the live audit's dense pass know where the text goes next? The languages check, teacher-forced.

    python experiments/audit_context.py DIR [--langs cs el] [--every 1 8 16 64] [--top 4 16 64] [--json OUT]

DIR: a default FlashHead build (`flashhead build gemma-3-270m -o DIR`). What the context leaves are
tokens new to the text (docs/FIDELITY.md, "Context-aware probes"). An audited step (`--audit N`)
has the dense head's whole distribution in hand; its best `k` tokens are the words the model
considers there. Variant "audit N/k": a step's context also holds the clusters of the dense top-k
tokens of every N-th earlier position of its text (N = 1: every step audited, the most this can
give), within the same budget E of the same P probes. Variant "self k": the clusters of FlashHead's
own top-k tokens of every earlier position (no dense pass). Against the context alone, same
positions; greedy agreement and KL divergence against the dense head.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flashhead.core import metrics
from flashhead.core.context import running
from flashhead.core.rows import as_rows
from flashhead.data import languages
from flashhead.data.hidden import teacher_forced
from flashhead.integrations import hf
from flashhead.kernels.step import pick
from flashhead.tools.bench import machine

POSITIONS = 1024     # per language, as the languages check (texts of up to 512 tokens)


def earlier(hit: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """hit [N, K] bool (position j reveals clusters) -> [N, K] bool: what positions j < i of the same
    text revealed."""
    n = hit.shape[0]
    starts = sorted(set([0] + first.nonzero().squeeze(1).tolist() + [n]))
    out = torch.zeros_like(hit)
    for a, b in zip(starts[:-1], starts[1:]):
        c = hit[a:b].to(torch.int32).cumsum(0) > 0
        out[a + 1:b] = c[:-1]
    return out


def revealed(assign: torch.Tensor, k_clusters: int, top: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The clusters of `top` [N, k] token ids at the positions `rows` [N] bool -> [N, K] bool."""
    hit = torch.zeros(top.shape[0], k_clusters, dtype=torch.bool)
    idx = rows.nonzero().squeeze(1)
    hit[idx.unsqueeze(1), assign[top[idx]]] = True
    return hit


def score(head, w, H, ctx, chunk=64):
    agree, kld = 0.0, []
    for s in range(0, H.shape[0], chunk):
        h = H[s:s + chunk]
        dense = w.dense(h)
        scores, tok, z = head.probe(h, ctx[s:s + chunk])
        agree += float(metrics.top1_agreement(pick(tok, z), dense).sum())
        kld.append(metrics.kl_divergence(dense, head.fill_logits(h, scores, tok, z)))
    k = torch.cat(kld)
    return {"agreement": agree / H.shape[0], "kld_mean": float(k.mean()), "kld_p99": float(k.quantile(0.99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--langs", nargs="+", default=["cs", "el"])
    ap.add_argument("--every", nargs="+", type=int, default=[1, 8, 16, 64])
    ap.add_argument("--top", nargs="+", type=int, default=[4, 16, 64])
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    lm, tok = hf.load(a.dir)
    head = lm.lm_head.flashhead
    w = as_rows(lm.lm_head.weight.detach().float())
    K, assign = head.num_clusters, head.assignments.cpu()
    kmax = max(a.top)
    res = {}
    with torch.no_grad(), head.flashhead_only():
        for g in a.langs:
            H, y, x, first = teacher_forced(lm, tok, languages.texts(g), POSITIONS, 512, inputs=True)
            dense_top = torch.cat([w.dense(H[s:s + 64]).topk(kmax, 1).indices for s in range(0, H.shape[0], 64)])
            own_top = []
            for s in range(0, H.shape[0], 64):
                h = H[s:s + 64]
                sc, t, z = head.probe(h, None)
                own_top.append(head.fill_logits(h, sc, t, z).topk(kmax, 1).indices)
            own_top = torch.cat(own_top)
            held = running(assign, K, x, first)
            idx = torch.arange(H.shape[0])
            pos = idx - torch.cummax(torch.where(first, idx, 0), 0).values      # position within its text
            r = res[g] = {"positions": int(H.shape[0]), "context": score(head, w, H, held)}
            all_rows = torch.ones(H.shape[0], dtype=torch.bool)
            for k in a.top:
                r[f"self {k}"] = score(head, w, H, held | earlier(revealed(assign, K, own_top[:, :k], all_rows), first))
                for n in a.every:
                    rows = (pos + 1) % n == 0
                    r[f"audit {n}/{k}"] = score(head, w, H, held | earlier(revealed(assign, K, dense_top[:, :k], rows), first))
            print(g, " | ".join(f"{v}: {m['agreement']:.2%} {m['kld_mean']:.3f}" for v, m in r.items() if v != "positions"),
                  flush=True)
            if a.json:
                a.json.write_text(json.dumps({"probes": head.probes, "context_probes": head.context_probes,
                                              "languages": res, "machine": machine()}, indent=1) + "\n")
    for v in next(iter(res.values())):
        if v == "positions":
            continue
        ag = [r[v]["agreement"] for r in res.values()]
        kl = [r[v]["kld_mean"] for r in res.values()]
        print(f"{v:>12}: worst {min(ag):.2%} mean {sum(ag) / len(ag):.2%} KLD mean {sum(kl) / len(kl):.3f}")


if __name__ == "__main__":
    main()
