"""docs/LLAMACPP.md's two tables (verified decoding; the fast mode's speed) from the raw JSON of
`flashhead bench --backend llamacpp` that scripts/benchmarks.sh writes to docs/bench/, and
docs/KERNELS.md's table of the check's cost per position (benchmarks/dense_check.py's JSON).

    python benchmarks/llamacpp_tables.py [--into docs/LLAMACPP.md] [--check-into docs/KERNELS.md]

Rows: docs/bench/llamacpp-MODEL.json (the bench's English prompt, batches 1, 4, 8),
docs/bench/exact-MODEL-LANG.json (batch 1, a language no build calibrates on),
docs/bench/dense-check-MODEL.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from flashhead.tools.doc_tables import emit

MODELS = {"gemma-3-270m": ("Gemma-3-270M", "Q4_K_M"), "smollm2-135m": ("SmolLM2-135M", "Q4_1")}
EXACT_MARK = ("<!-- exact table: start -->", "<!-- exact table: end -->")
SPEED_MARK = ("<!-- speed table: start -->", "<!-- speed table: end -->")
CHECK_MARK = ("<!-- dense check table: start -->", "<!-- dense check table: end -->")


def _load(name: str):
    p = Path("docs/bench") / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def markdown(head: list[str], rows: list[list[str]], left: int) -> str:
    """A Markdown table: the first `left` columns left-aligned, the rest right-aligned."""
    rule = ["---"] * left + ["---:"] * (len(head) - left)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, rule] + rows)


def exact_table() -> str:
    rows = []
    for m, (name, _) in MODELS.items():
        runs = [("English", _load(f"llamacpp-{m}"))] + [(lang.capitalize(), _load(f"exact-{m}-{lang}"))
                                                        for lang in ("polish", "chinese")]
        for lang, b in runs:
            if b is None:
                continue
            prompt = lang if lang == "English" else f"{lang} ({b['prompt_tokens']} tokens)"
            for r in b["decode"]:
                if lang == "English" and r["batch"] == 4 and m != "gemma-3-270m":
                    continue
                ms = " / ".join(f"{r[k]:.2f}" for k in ("exact_body_ms", "exact_head_ms", "exact_check_ms"))
                rows.append([name, prompt, str(r["batch"]), f"{r['exact_tok_s']:.1f}"]
                            + [f"{r[k]:.2f}x" for k in ("exact_speedup", "exact_speedup_vs_defaults", "speedup")]
                            + [f"{r['acceptance']:.3f}", f"{r['mean_draft']:.1f}", ms])
    return markdown(["model", "prompt", "batch", "exact tok/s", "vs dense, same settings", "vs llama.cpp's defaults",
                     "FlashHead (fast)", "acceptance", "mean K", "ms per token: body / head / check"], rows, 2)


def speed_table() -> str:
    rows = []
    for m, (name, quant) in MODELS.items():
        b = _load(f"llamacpp-{m}")
        for r in (b or {}).get("decode", []):
            rows.append([f"{name} {quant} ({b['probes']:,}, E = {b.get('context_probes') or 0})", str(r["batch"]),
                         f"{r['dense_tok_s']:.1f}", f"{r['flashhead_tok_s']:.1f}"]
                        + [f"{r[k]:.2f}x" for k in ("speedup", "speedup_vs_defaults", "bound")]
                        + [f"{r['flashhead_head_ms']:.2f}"])
    return markdown(["model (probes, context)", "batch", "dense tok/s", "FlashHead tok/s", "speedup",
                     "vs llama.cpp's defaults", "free-head bound", "FlashHead head ms per step"], rows, 1)


def check_table() -> str:
    runs = {m: _load(f"dense-check-{m}") for m in MODELS}
    runs = {m: {r["positions"]: r for r in b["rows"]} for m, b in runs.items() if b}
    keys = ("flashhead_argmax_ms_per_position", "flashhead_logits_ms_per_position", "llamacpp_head_ms_per_position")
    rows = []
    for n in sorted({n for by in runs.values() for n in by}):
        rows.append([str(n)] + [" / ".join(f"{by[n][k]:.2f}".replace("-", "−") for k in keys) if n in by else ""
                                for by in runs.values()])
    return markdown(["N"] + [f"{MODELS[m][0]}: argmax / logits / llama.cpp's head" for m in runs], rows, 0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--into", type=Path, help="write the tables between their markers in this doc")
    p.add_argument("--check-into", type=Path, help="write the dense check's table between its markers in this doc")
    a = p.parse_args()
    emit(exact_table(), a.into, EXACT_MARK)
    emit(speed_table(), a.into, SPEED_MARK)
    emit(check_table(), a.check_into, CHECK_MARK)


if __name__ == "__main__":
    main()
