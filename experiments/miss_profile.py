"""Where the fast mode's misses are on text no build saw: the languages check's positions, per language.

    python experiments/miss_profile.py DIR [--langs vi cs id] [--max-positions 1024] [--context-probes E] [--json OUT]

DIR: a default FlashHead build (`flashhead build gemma-3-270m -o DIR`). At the default probes P and
context budget E (context.py), teacher-forced as `flashhead eval DIR --languages` scores them: every
position where FlashHead's greedy token is not the dense head's has the dense top-1 token unprobed
(a probed token's logit is exact). Of those misses: how many had that token earlier in the same
text (the context could have held its cluster), how many had its cluster in the context set at all
(it then lost its place among the E to other context clusters), and stage 1's rank of the cluster
(the P that would have probed it). Per language: the probes stage 1 alone needs for 99.5% and what
that reads (bytes of the dense head, bf16), the number the issue's targets rest on.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flashhead.build.fit import dense_top1_rank, smallest_probes
from flashhead.core.context import running
from flashhead.core.metrics import cost
from flashhead.core.rows import as_rows
from flashhead.data import languages
from flashhead.data.hidden import teacher_forced
from flashhead.integrations import hf
from flashhead.kernels.step import pick


def profile(lm, tok, lang: str, positions: int) -> dict:
    head = lm.lm_head.flashhead
    w = as_rows(lm.lm_head.weight.detach().float())
    H, y, x, first = teacher_forced(lm, tok, languages.texts(lang), positions, 512, inputs=True)
    ranks = dense_top1_rank(head, H, lm.lm_head.weight.detach())
    seen: set[int] = set()
    carry, n_miss, in_text, in_set, miss_ranks = None, 0, 0, 0, []
    with head.flashhead_only():
        for s in range(0, H.shape[0], 64):
            h, ids, fst = H[s:s + 64], x[s:s + 64], first[s:s + 64]
            ctx = running(head.assignments, head.num_clusters, ids, fst, carry)
            carry = ctx[-1]
            top1 = w.dense(h).argmax(1)
            scores, probed, z = head.probe(h, ctx)
            greedy = pick(probed, z)
            for i in range(h.shape[0]):             # bookkeeping of the profile, not a decode step
                if bool(fst[i]):
                    seen = set()
                seen.add(int(ids[i]))
                if int(greedy[i]) != int(top1[i]):
                    t = int(top1[i])
                    n_miss += 1
                    in_text += t in seen
                    in_set += bool(ctx[i, head.assignments[t]])
                    miss_ranks.append(int(ranks[s + i]))
    n = H.shape[0]
    p995 = smallest_probes(ranks, 0.995)
    frac = cost(head.vocab, head.hidden, head.num_clusters, head.cluster_size, p995, head.config.quantization,
                torch.bfloat16)["bytes_fraction"]
    mr = torch.tensor(miss_ranks or [0]).float()
    return {"positions": n, "probes": head.probes, "context_probes": head.context_probes,
            "agreement": 1 - n_miss / n, "misses": n_miss, "top1_earlier_in_text": in_text,
            "top1_cluster_in_context": in_set, "miss_rank_median": float(mr.median()),
            "miss_rank_p90": float(mr.quantile(0.9)), "probes_for_995": p995, "bytes_for_995": round(frac, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--langs", nargs="+", default=list(languages.LANGUAGES))
    ap.add_argument("--max-positions", type=int, default=1024)
    ap.add_argument("--context-probes", type=int, default=None, help="the budget E (default: the model's)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    lm, tok = hf.load(a.dir)
    if a.context_probes is not None:
        lm.lm_head.flashhead.context_probes = a.context_probes
    out = {}
    for lang in a.langs:
        r = out[lang] = profile(lm, tok, lang, a.max_positions)
        print(f"{lang:>6}: agreement {r['agreement']:.2%}, misses {r['misses']} (top-1 earlier in the text "
              f"{r['top1_earlier_in_text']}, its cluster in the context set {r['top1_cluster_in_context']}), "
              f"stage-1 rank of the missed cluster median {r['miss_rank_median']:.0f} p90 {r['miss_rank_p90']:.0f}; "
              f"P for 99.5% {r['probes_for_995']} ({r['bytes_for_995']:.3f} of the bytes)", flush=True)
        if a.json:
            a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
