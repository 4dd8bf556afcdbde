"""How many next clusters a step should add, per model: in-domain and left out, at the default E.

    python experiments/next_count.py MODEL DIR [--counts 0 4 6 8 16 32] [--domains legal german] [--json OUT]
    python experiments/next_count.py --table OUT.json LANGS.json --into docs/FIDELITY.md

DIR: the model's default build with next clusters (`flashhead build MODEL -o DIR --next-clusters`).
Left-out builds: $FLASHHEAD_CACHE/left-out/MODEL/without-X-next, made by
`python benchmarks/left_out.py MODEL DIR --json J --next-clusters` (domains without one are scored
in-domain only). For every suite domain X, the eval documents teacher-forced once (`--max-positions`
positions, as left_out.py scores them) and scored with DIR's head (in-domain: DIR calibrated on X's
calibration split) and without-X-next's (left out), at the build's P and E, with the first m next
clusters of the token each step read, for every m in `--counts` (0: the context alone). Greedy
agreement and KLD per (domain, m). What it found: docs/FIDELITY.md, "Next clusters" (the count
rule of core/context.py `next_count`). `--table`: these JSONs and experiments/next_clusters.py's
(the languages check) as one table per file, a column per count.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flashhead.core.cache import cache_root
from flashhead.data import chat, corpus
from flashhead.data.hidden import teacher_forced
from flashhead.integrations import hf
from flashhead.tools.bench import machine
from flashhead.tools.doc_tables import emit

MARK = ("<!-- next clusters table: start -->", "<!-- next clusters table: end -->")
from flashhead.tools.evaluate import evaluate_hidden, suite_texts


def score(lm, H, y, inputs, counts, stop) -> dict:
    head = lm.lm_head.flashhead
    out = {}
    for m in counts:
        head.next_clusters = m
        r = evaluate_hidden(head, lm.lm_head.weight.detach(), H, y, [head.probes], stop_ids=stop, inputs=inputs)[0]
        out[str(m)] = {"top1_agreement": r["top1_agreement"], "kld_mean": r["kld_mean"]}
    head.next_clusters = None
    return out


def render(reports: list[dict]) -> str:
    """One table per report: rows per (domain, in-domain or left out) or per language, a column per
    count m: greedy agreement / mean KLD (nats); a language report ends with its worst and mean."""
    out = []
    for rep in reports:
        langs = "languages" in rep
        texts = rep["languages"] if langs else rep["domains"]
        first = next(iter(texts.values()))
        counts = [k for k in (first if langs else first["in_domain"]) if k != "positions"]
        head = f"{rep.get('model', 'gemma-3-270m')}, P = {rep['probes']}, E = {rep['context_probes']}"
        lines = [f"{head}, {'the languages check' if langs else 'the suite'} "
                 f"({rep['machine'].get('cpu', '?')}, {rep['machine'].get('isa', '?')}); greedy agreement / KLD per next clusters m:", "",
                 "| " + ("language" if langs else "domain, build") + " | positions | " + " | ".join(f"m = {m}" for m in counts) + " |",
                 "|---|---:|" + "---:|" * len(counts)]
        rows = [(t, r["positions"], r) for t, r in texts.items()] if langs else \
            [(f"{t}, {kind.replace('_', ' ')}", r["positions"], r[kind]) for kind in ("left_out", "in_domain")
             for t, r in texts.items() if kind in r]
        for name, n, r in rows:
            lines.append(f"| {name} | {n} | " + " | ".join(f"{r[m]['top1_agreement']:.2%} / {r[m]['kld_mean']:.3f}"
                                                         for m in counts) + " |")
        if langs:
            for what, f in (("worst", min), ("mean", lambda v: sum(v) / len(v))):
                lines.append(f"| **{what}** | | " + " | ".join(
                    f"{f([r[m]['top1_agreement'] for r in texts.values()]):.2%} / "
                    f"{(max if what == 'worst' else f)([r[m]['kld_mean'] for r in texts.values()]):.3f}" for m in counts) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("dir", type=Path, nargs="?")
    ap.add_argument("--table", nargs="+", type=Path, default=None, help="render these JSON files")
    ap.add_argument("--into", default=None, metavar="MD", help="replace the table between the markers of this file")
    ap.add_argument("--counts", nargs="+", type=int, default=[0, 4, 6, 8, 16, 32])
    ap.add_argument("--domains", nargs="+", default=None)
    ap.add_argument("--max-positions", type=int, default=2048)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.table:
        return emit(render([json.loads(p.read_text()) for p in a.table]), a.into, MARK)
    if not (a.model and a.dir):
        ap.error("give MODEL DIR, or --table JSON ...")
    torch.set_num_threads(2)
    lm, tok = hf.load(a.dir)
    head = lm.lm_head.flashhead
    if head.next_table is None:
        ap.error(f"{a.dir} has no next clusters: flashhead upgrade {a.dir} --next-clusters")
    has_chat = bool(getattr(tok, "chat_template", None))
    res = {}
    for x in a.domains or [d for d in corpus.SUITE if d != "chat" or has_chat]:
        stop = chat.control_token_ids(tok) if x == "chat" else None
        H, y, ids, first = teacher_forced(lm, tok, suite_texts(lm, tok, x, "eval"), a.max_positions, inputs=True)
        res[x] = {"positions": int(H.shape[0]), "in_domain": score(lm, H, y, (ids, first), a.counts, stop)}
        left = cache_root() / "left-out" / a.model / f"without-{x}-next"
        if (left / "config.json").is_file():
            lo, _ = hf.load(left)
            res[x]["left_out"] = score(lo, H, y, (ids, first), a.counts, stop)
            del lo
        for kind in ("in_domain", "left_out"):
            if kind in res[x]:
                print(f"{x} {kind}: " + " ".join(f"m={m} {r['top1_agreement']:.2%}/{r['kld_mean']:.3f}"
                                                 for m, r in res[x][kind].items()), flush=True)
        if a.json:
            a.json.write_text(json.dumps({"model": a.model, "probes": head.probes, "context_probes": head.context_probes,
                                          "stored": head.next_table.shape[1], "domains": res,
                                          "machine": machine()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
