"""Where the time of the Q8_0 (llama.cpp) head step goes: docs/KERNELS.md, section "GGUF Q8_0 head".

    python benchmarks/q8_step.py DIR [--gguf gemma-3-270m] [--json OUT]

DIR: a FlashHead directory (e.g. from `flashhead build gemma-3-270m`). Times, batch 1, the default
probes, median of `--repeats` calls, warm (the same call repeated) and cold (a 64 MB buffer written
before each call): torch's int8 stage 1 (the CPU kernel's) against the native one, stage 2 alone on
the probed rows in cluster order and in the file's order, and the whole native step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from flashhead.core.head import FlashHead
from flashhead.tools.bench import machine
from flashhead.backends.llamacpp import gguf_head
from flashhead.kernels import native
from flashhead.core.layout import load_assets
from flashhead.build.sources import gguf_of


def timed(fn, repeats: int, flush: torch.Tensor | None) -> float:
    for _ in range(3):
        fn()
    out = []
    for i in range(repeats):
        if flush is not None:
            flush.fill_(i)
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return round(statistics.median(out) * 1e3, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    in_file = gguf_head(gguf_of(args.model_dir, args.gguf))
    head = FlashHead(in_file, load_assets(args.model_dir))
    arranged = in_file.arrange(head.block_ids)
    h = torch.randn(1, head.hidden, generator=torch.Generator().manual_seed(0))
    scores = native.i8_scores(head.stage1.q, head.stage1.scale, h, threads)
    top = scores.topk(head.probes, dim=1).indices.view(-1).sort().values
    flush = torch.empty(64 * 2**20 // 4)
    cases = {
        "stage1_torch_int8pack": lambda: torch._weight_int8pack_mm(h.bfloat16(), head.stage1.q,
                                                                   head.stage1.scale_bf16),
        "stage1_native_int8": lambda: native.i8_scores(head.stage1.q, head.stage1.scale, h, threads),
        "stage2_cluster_order": lambda: arranged.dot(top, head.block_ids, h),
        "stage2_file_order": lambda: in_file.dot(top, head.block_ids, h),
        "step_native_file_order": lambda: head.greedy(h),
    }
    result = {"model_dir": args.model_dir, "probes": head.probes, "rows": int(top.numel() * head.cluster_size),
              "threads": threads, "machine": machine(), "ms": {}}
    for name, fn in cases.items():
        result["ms"][name] = {"warm": timed(fn, args.repeats, None), "cold": timed(fn, args.repeats, flush)}
    head = FlashHead(in_file, load_assets(args.model_dir), arrange=True)
    for key, flushing in (("warm", None), ("cold", flush)):
        result["ms"].setdefault("step_native_cluster_order", {})[key] = timed(lambda: head.greedy(h),
                                                                              args.repeats, flushing)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
