"""The leave-one-domain-out table of docs/FIDELITY.md: the fidelity on a kind of text the build never saw.

    python benchmarks/left_out.py MODEL DEFAULT_DIR --json docs/bench/left-out-MODEL.json [--domains ...]
    python benchmarks/left_out.py --table docs/bench/left-out-*.json --into docs/FIDELITY.md

For each suite domain X (chat only for a model with a chat template): a build calibrated on every
default source but X (`flashhead build MODEL -o DIR --calibrate-on <the rest> --probes P`, P the
default build's probes in DEFAULT_DIR, so every row reads the default's bytes), kept in
$FLASHHEAD_CACHE/left-out/MODEL/without-X, then scored on X's eval documents (teacher-forced,
`--max-positions` positions) with the context probes off (E = 0) and at the default budget E, on
the same positions (a document's own prefix is its context, as in `flashhead eval`). Rows of
domains not run this time are kept in the JSON. `--next-clusters`: the same builds with each
token's next clusters added (`flashhead upgrade DIR --next-clusters`, in without-X-next; scored
at the head's own count per step, and at others by experiments/next_count.py).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MARK = ("<!-- left-out table: start -->", "<!-- left-out table: end -->")
# the targets for the worst left-out domain's greedy agreement at 1/8 of the bytes
TARGET = {"gemma-3-270m": 0.995, "smollm2-135m": 0.99}


def measure(model: str, default_dir: Path, domains: list[str] | None, positions: int, out: Path,
            next_clusters: bool = False) -> None:
    import torch
    from transformers import AutoTokenizer

    import os
    import shutil

    from flashhead.build import add_next_clusters, build, calibration_sources
    from flashhead.core.cache import cache_root
    from flashhead.core.layout import load_assets
    from flashhead.data import chat, corpus
    from flashhead.data.hidden import teacher_forced
    from flashhead.integrations import hf
    from flashhead.tools.bench import machine
    from flashhead.tools.evaluate import evaluate_contexts, suite_texts

    torch.set_num_threads(2)
    probes = load_assets(default_dir).config.probes
    has_chat = bool(getattr(AutoTokenizer.from_pretrained(default_dir), "chat_template", None))
    sources = [s for s in calibration_sources(["suite"]) if s != "chat" or has_chat]
    report = json.loads(out.read_text()) if out.is_file() else {"model": model, "domains": {}}
    for x in domains or [d for d in corpus.SUITE if d != "chat" or has_chat]:
        d = cache_root() / "left-out" / model / f"without-{x}"
        t = time.time()
        if not (d / "config.json").is_file() or load_assets(d).config.probes != probes:
            build(model, d, calibration=[s for s in sources if s != x], probes=probes)
        if next_clusters:
            plain, d = d, d.with_name(d.name + "-next")
            if not (d / "config.json").is_file() or load_assets(d).successors is None \
                    or not torch.equal(load_assets(d).assignments, load_assets(plain).assignments):
                shutil.rmtree(d, ignore_errors=True)
                shutil.copytree(plain, d, copy_function=os.link)
                add_next_clusters(d)
        lm, tok = hf.load(d)
        head = lm.lm_head.flashhead
        stop = chat.control_token_ids(tok) if x == "chat" else None
        H, y, ids, first = teacher_forced(lm, tok, suite_texts(lm, tok, x, "eval"), positions, inputs=True)
        rows = evaluate_contexts(head, lm.lm_head.weight.detach(), H, y, (ids, first),
                                 [0, head.context_probes], stop_ids=stop)     # off, then the default budget
        report["domains"][x] = {"positions": int(H.shape[0]), "calibration": head.build["calibration"]["text"],
                                "seconds": round(time.time() - t), "results": rows}
        report["machine"] = machine()
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{model} without {x}: " + ", ".join(f"E={r['context_probes']} {r['top1_agreement']:.2%} "
                                                    f"KLD {r['kld_mean']:.3f}" for r in rows), flush=True)


def render(reports: list[dict]) -> str:
    lines = ["| model, domain left out | positions | agreement E=0 | agreement, default E | KLD E=0 | "
             "KLD, default E | p99 KLD, default E | ppl ratio E=0 | ppl ratio, default E |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    summary = []
    for rep in reports:
        m = rep["model"]
        worst = {}
        for x, r in rep["domains"].items():
            a, b = r["results"]
            lines.append(f"| {m} (P = {b['probes']}, E = {b['context_probes']}), {x} | {r['positions']} | "
                         f"{a['top1_agreement']:.2%} | {b['top1_agreement']:.2%} | {a['kld_mean']:.3f} | "
                         f"{b['kld_mean']:.3f} | {b['kld_p99']:.2f} | {a['ppl_flashhead'] / a['ppl_dense']:.3f} | "
                         f"{b['ppl_flashhead'] / b['ppl_dense']:.3f} |")
            for i, e in enumerate(("E=0", "default E")):
                v = r["results"][i]["top1_agreement"]
                if e not in worst or v < worst[e][1]:
                    worst[e] = (x, v)
        host = rep.get("machine", {})
        summary.append(f"{m}: worst left-out domain {worst['E=0'][0]} {worst['E=0'][1]:.2%} at E=0, "
                       f"{worst['default E'][0]} {worst['default E'][1]:.2%} at the default E (target "
                       f"{TARGET.get(m, float('nan')):.1%}; {host.get('cpu', '?')}, {host.get('isa', '?')})")
    return "\n".join(lines + [""] + ["; ".join(summary) + "."])


def main() -> None:
    from flashhead.tools.doc_tables import emit

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="smollm2-135m or gemma-3-270m (the alias flashhead build takes)")
    ap.add_argument("default_dir", nargs="?", type=Path, help="the model's default build (its probes are used)")
    ap.add_argument("--domains", nargs="+", default=None, help="suite domains to leave out (default: all)")
    ap.add_argument("--max-positions", type=int, default=2048, help="scored positions per domain (default %(default)s)")
    ap.add_argument("--json", type=Path, default=None, help="the rows, kept and updated (with a model)")
    ap.add_argument("--next-clusters", action="store_true", help="score the builds with next clusters added")
    ap.add_argument("--table", nargs="+", type=Path, default=None, help="render these JSON files")
    ap.add_argument("--into", default=None, metavar="MD", help="replace the table between the markers of this file")
    a = ap.parse_args()
    if a.table:
        emit(render([json.loads(p.read_text()) for p in a.table]), a.into, MARK)
    elif a.model and a.default_dir and a.json:
        measure(a.model, a.default_dir, a.domains, a.max_positions, a.json, a.next_clusters)
    else:
        ap.error("give MODEL DEFAULT_DIR --json OUT, or --table JSON ...")


if __name__ == "__main__":
    main()
