"""The FlashHead section of a model card (README.md): how the head was built and how closely it
follows the dense head, from the build record (`ClusterIndex.build`, flashhead.json "build")."""
from __future__ import annotations

from pathlib import Path

from ..core.index import ClusterIndex

BEGIN, END = "<!-- flashhead:begin -->", "<!-- flashhead:end -->"


def section(index: ClusterIndex) -> str:
    c, b = index.config, index.build
    cal = b.get("calibration") or {}
    lines = [BEGIN, "## FlashHead", "",
             "This model's output head runs as **FlashHead** (retrieval over clustered head rows): "
             "load it with `flashhead` installed (`import flashhead.integrations.hf`, then "
             "`AutoModelForCausalLM.from_pretrained`, or the vLLM plugin).", "",
             f"- built from: `{b.get('source', 'unknown')}`",
             f"- clusters: {index.num_clusters} of {c.cluster_size} tokens, {c.probes} probed per step "
             f"({c.probes * c.cluster_size / index.vocab:.1%} of the vocabulary), "
             f"stage-1 quantization {c.quantization}"]
    if cal:
        lines.append(f"- calibration: {cal.get('text', '?')}, {cal.get('positions', '?')} positions")
        agree = cal.get("held_out_agreement")
        if agree is not None:
            target = cal.get("target_agreement")
            lines.append(f"- measured fidelity: greedy top-1 agreement with the dense head "
                         f"{agree:.2%} on {cal.get('held_out_positions', '?')} held-out calibration "
                         f"positions" + (f" (target {target:.2%})" if target else ""))
    if not b:
        lines.append("- no build record (assets not built by `flashhead build`)")
    return "\n".join(lines + [END]) + "\n"


def write_section(path: Path, index: ClusterIndex) -> None:
    """Write (or replace) the FlashHead section of the README.md at `path`."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section(index) + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section(index)
    path.write_text(text)
