"""Render the context-aware probes' tables of docs/FIDELITY.md: the languages check (`flashhead eval
DIR --languages --json`) and the suite with and without the context (two `flashhead eval DIR
--suite --json` runs, `--context-probes 0` and the default).

    flashhead eval DIR --languages --context-probes 0,192 --json > docs/bench/languages-gemma-3-270m.json
    python benchmarks/languages.py docs/bench/languages-gemma-3-270m.json --into docs/FIDELITY.md
    python benchmarks/languages.py --suite MODEL=E0.json,E.json [MODEL=...] --into docs/FIDELITY.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from flashhead.tools.doc_tables import emit

MARK = ("<!-- languages table: start -->", "<!-- languages table: end -->")
SUITE_MARK = ("<!-- suite context table: start -->", "<!-- suite context table: end -->")


def render(report: dict, name: str) -> str:
    e = report["contexts"]
    head = ["language", "script", "positions"] + [f"agreement E={x}" for x in e] + \
        [f"KLD E={x}" for x in e] + [f"p99 KLD E={x}" for x in e]
    lines = [f"`{name}`, probes {report['probes']} (1/8 of the bytes), texts of up to {report['max_length']} "
             "tokens, greedy agreement with the dense head and KL divergence (nats) per context budget E:", "",
             "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for lang, r in report["languages"].items():
        rows = r["results"]
        cells = [lang, r["script"], str(r["positions"])] + [f"{x['top1_agreement']:.2%}" for x in rows] + \
            [f"{x['kld_mean']:.3f}" for x in rows] + [f"{x['kld_p99']:.2f}" for x in rows]
        lines.append("| " + " | ".join(cells) + " |")
    s = report["summary"]
    lines += ["", "; ".join(f"E={x}: worst {s[str(x)]['worst']:.2%}, mean {s[str(x)]['mean']:.2%}, KLD worst "
                            f"{s[str(x)]['kld_worst']:.3f}, mean {s[str(x)]['kld_mean']:.3f}" for x in e) + "."]
    return "\n".join(lines)


def render_suite(pairs: dict) -> str:
    """{model: (report at E = 0, report at the default E)} -> one row per model and domain."""
    lines = ["| model, domain | agreement E=0 | agreement, default E | KLD E=0 | KLD, default E | "
             "ppl ratio E=0 | ppl ratio, default E |", "|---|---:|---:|---:|---:|---:|---:|"]
    for model, (a, b) in pairs.items():
        for d in a["domains"]:
            x, y = a["domains"][d]["results"][0], b["domains"][d]["results"][0]
            lines.append(f"| {model} (E = {y['context_probes']} of {y['probes']}), {d} | "
                         f"{x['top1_agreement']:.2%} | {y['top1_agreement']:.2%} | {x['kld_mean']:.4f} | "
                         f"{y['kld_mean']:.4f} | {x['ppl_flashhead'] / x['ppl_dense']:.3f} | "
                         f"{y['ppl_flashhead'] / y['ppl_dense']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="?", help="the output of flashhead eval DIR --languages --json")
    ap.add_argument("--suite", nargs="+", default=None, metavar="MODEL=E0.json,E.json",
                    help="the suite's table from eval --suite --json runs at E = 0 and the default E")
    ap.add_argument("--into", default=None, metavar="MD", help="replace the table between the markers of this file")
    args = ap.parse_args()
    if args.suite:
        pairs = {}
        for item in args.suite:
            model, files = item.split("=")
            pairs[model] = tuple(json.loads(Path(f).read_text()) for f in files.split(","))
        table, mark = render_suite(pairs), SUITE_MARK
    elif args.json:
        report = json.loads(Path(args.json).read_text())
        table, mark = render(report, Path(args.json).stem.removeprefix("languages-")), MARK
    else:
        ap.error("give a languages JSON or --suite")
    emit(table, args.into, mark)


if __name__ == "__main__":
    main()
