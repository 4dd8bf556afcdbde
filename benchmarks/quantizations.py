"""Render docs/FIDELITY.md's table "Beside llama.cpp's quantizations": FlashHead's KL divergence per
domain next to llama.cpp's own quantizations of the same GGUF, on the same positions, from
`flashhead eval DIR --backend llamacpp --quantizations q8_0,q4_k_m --json` runs (one per build:
the default build, and builds that left a domain out, whose rows are marked "left out").

    flashhead eval DIR --backend llamacpp --quantizations q8_0,q4_k_m --json > docs/bench/quant-smollm2-135m.json
    python benchmarks/quantizations.py docs/bench/quant-smollm2-135m.json [LEFT_OUT.json ...] --into docs/FIDELITY.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from flashhead.tools.doc_tables import emit

MARK = ("<!-- quantizations table: start -->", "<!-- quantizations table: end -->")


def render(reports: list[dict]) -> str:
    kinds = [q["quantization"] for q in next(iter(reports[0]["domains"].values()))["quantizations"]]
    head = ["domain", "build", "positions", "FlashHead KLD", "p99", "same top-1"]
    for k in kinds:
        head += [f"{k} KLD", "p99", "same top-1"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    below = []
    for rep in reports:
        for d, r in rep["domains"].items():
            f = r["results"][0]
            build = "in-domain" if r["in_domain"] else "**left out**"
            cells = [d, f"{build}, P={f['probes']}, E={f['context_probes']}", str(r["positions"]),
                     f"{f['kld_mean']:.3f}", f"{f['kld_p99']:.2f}", f"{f['top1_agreement']:.2%}"]
            for q in r["quantizations"]:
                cells += [f"{q['kld_mean']:.3f}", f"{q['kld_p99']:.2f}", f"{q['top1_agreement']:.2%}"]
            lines.append("| " + " | ".join(cells) + " |")
            q4 = [q for q in r["quantizations"] if q["quantization"] == "Q4_K_M"]
            if q4:
                below.append((d, build, f["kld_mean"] < q4[0]["kld_mean"]))
    if below:
        won = [f"{d} ({b.strip('*')})" for d, b, ok in below if ok]
        lost = [f"{d} ({b.strip('*')})" for d, b, ok in below if not ok]
        lines += ["", f"FlashHead's mean KLD below Q4_K_M's on {len(won)} of {len(below)} rows"
                  + (f"; above on {', '.join(lost)}" if lost else "") + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="outputs of flashhead eval DIR --backend llamacpp --quantizations ... --json")
    ap.add_argument("--into", default=None, metavar="MD", help="replace the table between the markers of this file")
    args = ap.parse_args()
    table = render([json.loads(Path(f).read_text()) for f in args.json])
    emit(table, args.into, MARK)


if __name__ == "__main__":
    main()
