"""The CPU step on the native kernels (kernels/rows.c: stage 2 on the rows as stored, bf16 widened
to fp32 inside the product; i8_stage1.c) against torch's ops (the path without a C compiler: the
gathered rows copied to fp32, torch's fp32 product, torch's int8 kernel) and the dense head, side by
side in one run, cold cache (a 256 MB buffer written before every call), median of 30. bf16 rows
by default (vLLM-CPU, transformers bf16); `--dtype float32`: an fp32 head (transformers' default).

    python benchmarks/native_step.py DIR [DIR ...] [--batch 1 4] [--dtype float32] [--json docs/bench/native-step-bfloat16.json]
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
    from flashhead.tools.bench import FLUSH_BYTES, machine, timeit
    from flashhead.kernels import native as native_kernels
    from flashhead.core.layout import load_assets, read_head_weight

    p = argparse.ArgumentParser()
    p.add_argument("dirs", nargs="+")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("FLASHHEAD_THREADS", "2")))
    flush = torch.empty(FLUSH_BYTES // 4)
    rows = []
    for d in a.dirs:
        dtype = getattr(torch, a.dtype)
        w = read_head_weight(d).to(dtype)
        head = FlashHead(w, load_assets(d), kernel="cpu")
        head.dense_above = None
        gen = torch.Generator().manual_seed(0)
        for b in a.batch:
            # hidden states of the head's own scale: random mixtures of head rows (the values only
            # choose which clusters are probed; the work per step is the same for any)
            h = (torch.randn(b, 64, generator=gen) @ w[torch.randint(0, w.shape[0], (64,), generator=gen)].float())
            h = (h / h.norm(dim=1, keepdim=True) * 60).to(dtype)
            t = {}
            with torch.inference_mode():
                t["dense"] = timeit(lambda: torch.nn.functional.linear(h, w), "cpu", 3, 30, flush)
                for native in (False, True):
                    native_kernels._AVAILABLE = native
                    t["native" if native else "fp32 copy"] = timeit(lambda: head(h), "cpu", 3, 30, flush)
                    t[("native" if native else "fp32 copy") + " stage 2"] = timeit(lambda: head.probe(h), "cpu", 3, 30, flush)
            ms = {k: statistics.median(v) * 1e3 for k, v in t.items()}
            row = {"dir": d, "dtype": a.dtype, "machine": machine(), "vocab": w.shape[0], "hidden": w.shape[1], "probes": head.probes, "batch": b, **ms}
            rows.append(row)
            print(f"{Path(d).name} {a.dtype} V={w.shape[0]} P={head.probes} batch {b}: dense {ms['dense']:.2f} ms | "
                  f"FlashHead logits torch's ops {ms['fp32 copy']:.2f}, native {ms['native']:.2f} | "
                  f"probe (stage 1 + 2) torch's ops {ms['fp32 copy stage 2']:.2f}, native {ms['native stage 2']:.2f}",
                  flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
