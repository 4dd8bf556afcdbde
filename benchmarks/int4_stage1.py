"""int4 against int8 stage 1 on the CPU, at equal bytes: docs/KERNELS.md, "int4 stage 1".

    python benchmarks/int4_stage1.py DIR [--dtype bfloat16] [--batches 1 4 16] [--json OUT]

DIR: a default (int8) FlashHead directory (`flashhead build MODEL -o DIR`). The int4 head takes the
same clusters and the probes an int4 build takes at the same bytes cap (fit.budget_probes: the
table is half the size, so more probes fit). Times, side by side in one run, cold cache (a 256 MB
buffer written before each call), real hidden states (held-out text through the model): stage 1
alone (torch's packed int8 kernel, torch's packed int4 kernel, the dequantizing int4 reference),
then the dense head and both FlashHead heads' greedy step and full logits (flashhead.tools.bench.bench_head).
Fidelity of the same two heads on the per-domain suite: `python experiments/suite_lab.py MODEL
--quantization int4` (docs/FIDELITY.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch


def main() -> None:
    from flashhead import FlashHead
    from flashhead.tools.bench import FLUSH_BYTES, DTYPES, _summary, bandwidth, bench_head, machine, timeit
    from flashhead.data.corpus import load as corpus
    from flashhead.build.fit import budget_probes
    from flashhead.data.hidden import teacher_forced
    from flashhead.integrations import hf
    from flashhead.kernels.cpu import CPU
    from flashhead.core.layout import load_assets

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("FLASHHEAD_THREADS", "2")))
    dtype = DTYPES[a.dtype]
    model, tok = hf.load(a.model_dir, dtype=dtype)
    weight = model.lm_head.weight.detach()
    index8 = load_assets(a.model_dir)
    if index8.config.quantization != "int8":
        raise SystemExit(f"{a.model_dir}: stage 1 is {index8.config.quantization}, an int8 build is wanted")
    p4 = budget_probes(*weight.shape, index8.config.cluster_size, "int4")
    index4 = dataclasses.replace(index8, config=dataclasses.replace(index8.config, quantization="int4", probes=p4))
    heads = {"int8": FlashHead(weight, index8), "int4": FlashHead(weight, index4)}
    H, _ = teacher_forced(model, tok, corpus("eval"), max_positions=1024)
    H = H[torch.randperm(H.shape[0], generator=torch.Generator().manual_seed(0))].to(dtype)
    flush = torch.empty(FLUSH_BYTES // 4)
    bw = bandwidth("cpu")
    stage1 = []
    for b in a.batches:
        h = H[:b]
        row = {"batch": b}
        for name, head in heads.items():
            row[f"{name}_packed_us"] = _summary(timeit(lambda: CPU.stage1(head.step, h), "cpu", 3, a.repeats, flush))[0]
        st4 = heads["int4"].stage1
        row["int4_reference_us"] = _summary(timeit(lambda: st4(h), "cpu", 3, a.repeats, flush))[0]
        stage1.append(row)
        print(b, {k: round(v, 1) for k, v in row.items()}, flush=True)
    steps = {}
    for name, head in heads.items():
        steps[name] = bench_head(head, weight, H, a.batches, "cpu", bw, repeats=a.repeats)
        for r in steps[name]:
            print(name, f"P={head.probes}", r["batch"], f"dense {r['dense_us']:.0f} us, greedy "
                  f"{r['flashhead_greedy_us']:.0f} us ({r['greedy_speedup']:.2f}x), logits {r['flashhead_us']:.0f} us "
                  f"({r['speedup']:.2f}x), bytes {r['bytes_fraction']:.3f}", flush=True)
    out = {"model_dir": str(a.model_dir), "dtype": a.dtype, "vocab": weight.shape[0], "hidden": weight.shape[1],
           "clusters": index8.num_clusters, "probes": {k: h.probes for k, h in heads.items()},
           "machine": machine("cpu", bw), "stage1": stage1, "steps": steps}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
