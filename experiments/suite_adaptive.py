"""Adaptive probes per position against fixed probes at equal mean bytes (measured, not adopted).

    python experiments/suite_adaptive.py smollm2-135m --p1 192 --p2 1024

One build calibrated on every source (suite_lab.fitted), then on every suite domain's eval documents
three rules that give a position more probes where it looks unsure, scored from the dense logits
(a position agrees when the dense top-1's cluster lies within the clusters it probes):
    mass   the fewest top clusters leaving at most m of stage 1's softmax(s_k + lse_k(offsets))
           mass unprobed (one tier, at most P2)
    gap    P1 probes; P2 if the best exact logit clears the first unprobed cluster's score by less
           than g (two tiers)
    pmax   P1 probes; P2 if the softmax of the probed exact logits peaks below p (two tiers)
Each line: domain:agreement/mean probes. Compare with `fixed` at the same mean probes.

    python experiments/suite_adaptive.py smollm2-135m --outliers legal german code

instead scores "outlier tokens scored exactly": per left-out domain X (a build on every other
source), the R tokens furthest from their cluster's stage-1 vector in the calibrated metric join
every step, paid for by R/16 fewer probes.
"""
from __future__ import annotations

import argparse

import torch



def main():
    from suite_data import load
    from suite_lab import fitted

    from flashhead import FlashHead
    from flashhead.data.corpus import DOMAINS, SUITE

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--p1", type=int, default=192)
    p.add_argument("--p2", type=int, default=1024)
    p.add_argument("--outliers", nargs="+", default=None, metavar="DOMAIN")
    p.add_argument("--probes", type=int, default=288)
    a = p.parse_args()
    torch.set_num_threads(2)
    data = load(a.model)
    w = data["head"]
    if a.outliers:
        return outliers(a, data)
    index, held = fitted(a.model, data, list(DOMAINS) + ["self"], usage_floor=1e-6)
    head = FlashHead(w, index)
    off = index.offsets[head.block_ids]                                   # [K, cs]
    lse = torch.logsumexp(off, 1)
    rules = {"mass": [3e-2, 1e-2, 3e-3, 1e-3], "gap": [10, 12, 14, 16], "pmax": [0.3, 0.5, 0.7, 0.9]}
    lines = {f"{r}<{t:g}": [] for r, ts in rules.items() for t in ts}
    fixed = {q: [] for q in (a.p1, 288, 384, 512, a.p2)}
    for dom in [d for d in SUITE if f"{d}/eval_h" in data]:
        rank, gap, pmax, need = [], [], [], {m: [] for m in rules["mass"]}
        for s in range(0, data[f"{dom}/eval_h"].shape[0], 256):
            x = data[f"{dom}/eval_h"][s:s + 256]
            dense = x @ w.T
            sc = head.scores(x)
            own = sc.gather(1, head.assignments[dense.argmax(1)].unsqueeze(1))
            rank.append((sc >= own).sum(1) - 1)
            vals, top = sc.topk(a.p2, dim=1, sorted=True)
            z = dense.gather(1, head.block_ids[top[:, :a.p1]].flatten(1))
            gap.append(z.amax(1) - vals[:, a.p1])
            pmax.append(torch.softmax(z, 1).amax(1))
            logm = sc + lse
            mass = torch.exp(logm.gather(1, top) - torch.logsumexp(logm, 1, keepdim=True))
            left = mass.flip(1).cumsum(1).flip(1) - mass + (1 - mass.sum(1, keepdim=True)).clamp_min(0)
            for m in rules["mass"]:
                need[m].append((left > m).sum(1) + 1)
        rank, gap, pmax = torch.cat(rank), torch.cat(gap), torch.cat(pmax)
        for q in fixed:
            fixed[q].append(f"{dom}:{float((rank < q).float().mean()):.4f}")
        for m in rules["mass"]:
            n = torch.cat(need[m])
            lines[f"mass<{m:g}"].append(f"{dom}:{float((rank < n).float().mean()):.4f}/{float(n.float().mean()):.0f}")
        for name, sig in (("gap", gap), ("pmax", pmax)):
            for t in rules[name]:
                two = sig < t
                agree = ((rank < a.p1) | (two & (rank < a.p2))).float().mean()
                lines[f"{name}<{t:g}"].append(f"{dom}:{float(agree):.4f}/{a.p1 + float(two.float().mean()) * (a.p2 - a.p1):.0f}")
    for q, row in fixed.items():
        print(f"fixed P={q:<6}", " ".join(row))
    for k, row in lines.items():
        print(f"{k:<12}", " ".join(row))


def outliers(a, data) -> None:
    from suite_lab import calibration, fitted

    from flashhead import FlashHead
    from flashhead.build.calibrate import query_transform, second_moment
    from flashhead.data.corpus import DOMAINS

    w = data["head"]
    for x in a.outliers:
        sources = [s for s in list(DOMAINS) + ["self"] if s != x]
        index, _ = fitted(a.model, data, sources)
        head = FlashHead(w, index)
        t = query_transform(second_moment(calibration(data, sources)[0], normalize=True))
        far = ((w - index.centroids[index.assignments]) @ t).norm(dim=1)      # [V]
        h = data[f"{x}/eval_h"]
        top1 = (h @ w.T).argmax(1)
        sc = head.scores(h)
        rank = (sc >= sc.gather(1, head.assignments[top1].unsqueeze(1))).sum(1) - 1
        line = [f"{x}: fixed P={a.probes} {float((rank < a.probes).float().mean()):.4f}"]
        for r in (256, 512, 1024, 2048):
            exact = torch.zeros(w.shape[0], dtype=torch.bool)
            exact[far.topk(r).indices] = True
            p = a.probes - r // 16
            line.append(f"R={r}+P={p}:{float(((rank < p) | exact[top1]).float().mean()):.4f}")
        print(" ".join(line), flush=True)


if __name__ == "__main__":
    main()
