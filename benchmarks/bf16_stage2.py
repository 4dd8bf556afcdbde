"""Stage 2 on bf16 head rows (the head of a model served in bf16: vLLM-CPU, transformers bf16):
the native kernel (kernels/bf16_rows.c, rows widened to fp32 inside the product) against the
previous path (the gathered rows copied to fp32, then torch's fp32 product) and the dense bf16 head,
side by side in one run, cold cache (a 256 MB buffer written before every call), median of 30.

    python benchmarks/bf16_stage2.py DIR [DIR ...] [--batch 1 4] [--json docs/bench/bf16-stage2.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path


def main():
    import torch

    from flashhead import FlashHead
    from flashhead.bench import FLUSH_BYTES, timeit
    from flashhead.kernels import cpu
    from flashhead.layout import load_assets, read_head_weight

    p = argparse.ArgumentParser()
    p.add_argument("dirs", nargs="+")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("FLASHHEAD_THREADS", "2")))
    flush = torch.empty(FLUSH_BYTES // 4)
    rows = []
    for d in a.dirs:
        w = read_head_weight(d).bfloat16()
        head = FlashHead(w, load_assets(d), kernel="cpu")
        head.dense_above = None
        gen = torch.Generator().manual_seed(0)
        for b in a.batch:
            # hidden states of the head's own scale: random mixtures of head rows (the values only
            # choose which clusters are probed; the work per step is the same for any)
            h = (torch.randn(b, 64, generator=gen) @ w[torch.randint(0, w.shape[0], (64,), generator=gen)].float())
            h = (h / h.norm(dim=1, keepdim=True) * 60).bfloat16()
            t = {}
            with torch.inference_mode():
                t["dense"] = timeit(lambda: torch.nn.functional.linear(h, w), "cpu", 3, 30, flush)
                for native in (False, True):
                    cpu._NATIVE = native
                    t["native" if native else "fp32 copy"] = timeit(lambda: head(h), "cpu", 3, 30, flush)
                    t[("native" if native else "fp32 copy") + " stage 2"] = timeit(lambda: head.probe(h), "cpu", 3, 30, flush)
            ms = {k: statistics.median(v) * 1e3 for k, v in t.items()}
            row = {"dir": d, "vocab": w.shape[0], "hidden": w.shape[1], "probes": head.probes, "batch": b, **ms}
            rows.append(row)
            print(f"{Path(d).name} V={w.shape[0]} P={head.probes} batch {b}: dense {ms['dense']:.2f} ms | "
                  f"FlashHead logits fp32-copy {ms['fp32 copy']:.2f}, native {ms['native']:.2f} | "
                  f"probe (stage 1 + 2) fp32-copy {ms['fp32 copy stage 2']:.2f}, native {ms['native stage 2']:.2f}",
                  flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
