"""Markdown tables of docs/bench/suite-MODEL.json (experiments/suite_lab.py) for experiments/FINDINGS.md.

    python experiments/suite_report.py smollm2-135m gemma-3-270m [--write experiments/FINDINGS.md]

`--write` puts the tables in place in the doc: from its "### MODEL" heading of the first model to
the next "## " heading.

Per model: the default build (calibrated on the whole suite: every domain is then in-domain) per
domain; leave one domain out (the build never saw the domain: the number for a user's unknown
text), with the worst row marked; agreement per calibration at equal probes; self-samples from
BOS against from every kind of token; int8 against int4 stage 1 at equal bytes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

TARGETS = {"smollm2-135m": 1.10, "gemma-3-270m": 1.05}   # perplexity ratio asked per model


def row(r: dict) -> list[str]:
    ratio = r["ppl_flashhead"] / r["ppl_dense"]
    need = (f"{r['probes_for_995']:,} ({r['bytes_for_995']:.3f})" if "probes_for_995" in r else "—")
    return [r["domain"] + ("" if r.get("recipe") else " †"), f"{r['probes']:,}", f"{r['bytes_fraction_bf16']:.3f}", f"{r['top1_agreement']:.2%}",
            f"{r['tv_distance']:.4f}", f"{ratio:.3f}", need]


def sign_test(a: int, b: int) -> float:
    """Two-sided sign test: the chance of a split at least this uneven of a + b discordant positions
    if either side were as likely to miss."""
    from math import comb

    n = a + b
    return 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, k) for k in range(min(a, b) + 1)) / 2 ** n)


def p_value(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else "< 0.01"


def table(rows: list[list[str]], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def report(model: str) -> str:
    rows = json.loads((Path("docs/bench") / f"suite-{model}.json").read_text())
    head = ["domain", "P", "bytes (bf16)", "agreement", "TV (T=1)", "ppl ratio", "P for 99.5% (bytes)"]
    out = [f"### {model}\n"]
    default = [r for r in rows if r["variant"] == "suite"]
    out += ["Default build (calibrated on every domain: **in-domain**, eval documents held out):\n",
            table([row(r) for r in default], head), ""]
    loo = [r for r in rows if r["variant"].startswith("without ") and "@" not in r["variant"]]
    if loo:
        worst = min(loo, key=lambda r: r["top1_agreement"])
        body = []
        for r in loo:
            x = row(r)
            if r is worst:
                x = [f"**{v}**" for v in x]
            body.append(x)
        out += ["Leave one domain out (built on every other source, scored on the one it never saw; "
                "worst row in bold):\n", table(body, head), ""]
    by = {}
    for r in rows:
        by.setdefault(r["variant"], {})[r["domain"]] = r
    variants = [v for v in ("prose", "self", "suite", "cosine") if v in by]
    domains = [r["domain"] for r in default]
    if len(variants) > 1:
        body = [[v + (" (uncalibrated)" if v == "cosine" else "")] +
                [f"{by[v][d]['top1_agreement']:.2%}" + ("*" if v not in ("cosine", "self") and
                                                         (v == "suite" or v == d) else "")
                 for d in domains] for v in variants]
        out += [f"Greedy agreement by calibration, at P = {default[0]['probes']:,} (* in-domain):\n",
                table(body, ["calibrated on"] + domains), ""]
    paired = [(r, by["cosine"][r["domain"]]) for r in loo
              if "unprobed" in r and "unprobed" in by.get("cosine", {}).get(r["domain"], {})]
    if paired:
        body = []
        for r, c in paired:
            mine, theirs = set(r["unprobed"]), set(c["unprobed"])
            a, b = len(mine - theirs), len(theirs - mine)
            body.append([r["domain"], f"{len(mine):,}", f"{len(theirs):,}", f"{a:,}", f"{b:,}", p_value(sign_test(a, b))])
        out += ["Left out against uncalibrated, position by position (the dense top-1 token left unprobed "
                "at the build's P; p: two-sided sign test on the positions only one of the two misses):\n",
                table(body, ["domain", "left out misses", "uncalibrated misses", "only left out", "only uncalibrated", "p"]), ""]
    bos = [(r, by.get(r["variant"].split("@")[0], {}).get(r["domain"])) for r in rows if r["variant"].endswith("@starts0")]
    if bos:
        body = [[r["variant"].split("@")[0] + ", on " + r["domain"], f"{r['top1_agreement']:.2%} / {r['tv_distance']:.4f}",
                 f"{k['top1_agreement']:.2%} / {k['tv_distance']:.4f}" if k else "—"] for r, k in bos]
        out += ["The model's own samples started from BOS alone against from every kind of token "
                "(kinds.py), everything else equal (agreement / TV):\n",
                table(body, ["build", "from BOS", "from every kind"]), ""]
    int4 = [(r, by.get(r["variant"].split("@")[0], {}).get(r["domain"])) for r in rows if r["variant"].endswith("@int4")]
    if int4:
        def cell(r):
            return (f"{r['probes']:,}: {r['top1_agreement']:.2%} / {r['tv_distance']:.4f} / "
                    f"{r['ppl_flashhead'] / r['ppl_dense']:.3f}") if r else "—"
        body = [[("in-domain" if r["variant"].startswith("suite") else "left out") + ", " + r["domain"],
                 cell(k), cell(r)] for r, k in int4]
        out += ["Stage 1 in int8 against int4 (a scale per 64 columns) at equal bytes (0.125 of the dense "
                "head: int4's smaller table buys more probes), the same clusters (P: agreement / TV / "
                "ppl ratio):\n", table(body, ["build, scored on", "int8", "int4"]), ""]
    # the breadth rows and their baselines come from one earlier run, kept in their own file
    brows = json.loads(bpath.read_text()) if (bpath := Path("docs/bench") / f"suite-breadth-{model}.json").is_file() else []
    bby = {}
    for r in brows:
        bby.setdefault(r["variant"], {})[r["domain"]] = r
    breadth = [(r, bby.get(r["variant"].split("@")[0], {}).get(r["domain"])) for r in brows
               if r["variant"].endswith("@breadth")]
    if breadth:
        def cell(r):
            return f"{r['top1_agreement']:.2%} / {r['tv_distance']:.4f} / {r['ppl_flashhead'] / r['ppl_dense']:.3f}" if r else "—"

        body = []
        for r, k in breadth:
            paired = k is not None and "unprobed" in k      # rows scored before the lists were kept: no pairs
            a, b = (len(set(r["unprobed"]) - set(k["unprobed"])), len(set(k["unprobed"]) - set(r["unprobed"]))) if paired else (0, 0)
            body.append([("in-domain" if r["variant"].startswith("suite") else "left out") + ", " + r["domain"],
                         cell(k), cell(r), f"{b:,} / {a:,}" if paired else "—",
                         p_value(sign_test(a, b)) if paired else "—"])
        out += ["Calibration breadth: the same recipe with four more languages among its sources (Polish, "
                "Czech, Bulgarian, Chinese fortunes: corpus.LANGUAGES, `suite_lab.py --breadth`), the same "
                f"total of positions (so each source's share shrinks); rows of one earlier run ({bpath}), "
                "P as fitted (agreement / TV / ppl "
                "ratio; misses fixed / added: the dense top-1 left unprobed by the default only / by the "
                "broader build only; p: two-sided sign test):\n",
                table(body, ["build, scored on", "default sources", "+ 4 languages", "misses fixed / added", "p"]), ""]
    if any(not r.get("recipe") for r in rows + brows):
        out += ["† measured on a build of the previous recipe (self-samples from BOS alone, 8 k-means "
                "rounds, the usage statistic on every position); not rerun yet.\n"]
    return "\n".join(out)


def write(doc: Path, text: str, first: str) -> None:
    old = doc.read_text()
    start = old.find(f"\n### {first}\n")
    end = old.find("\n## ", start + 1)
    if start < 0 or end < 0:
        raise SystemExit(f"{doc}: no '### {first}' heading followed by a '## ' heading to write the tables between")
    doc.write_text(old[:start + 1] + text.rstrip("\n") + "\n" + old[end:])


if __name__ == "__main__":
    args = sys.argv[1:]
    doc = None
    if "--write" in args:
        i = args.index("--write")
        if i + 1 >= len(args):
            raise SystemExit("--write needs the doc's path (experiments/FINDINGS.md)")
        doc = Path(args[i + 1])
        del args[i:i + 2]
    models = args or ["smollm2-135m", "gemma-3-270m"]
    text = "\n".join(report(m) for m in models)
    if doc:
        write(doc, text, models[0])
    else:
        print(text)
