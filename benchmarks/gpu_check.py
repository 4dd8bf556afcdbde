"""Verified decoding's check on a GPU: the dense head over K positions in one product, against one
position, on a head of Llama-3.2-1B's shape (128,256 x 2,048, bf16, random weights: the cost of a
product does not depend on the values). Where the head is memory-bound, K positions should cost
about what one does; this measures how close, per K, to run when a GPU is at hand:

    python benchmarks/gpu_check.py [--json OUT]        # CUDA, bf16
    python benchmarks/gpu_check.py --tiny              # a small head on the CPU (checks the script)

Per K: the dense product h [K, d] @ W.T and its argmax, timed with CUDA events over `--repeats`
runs after a warm-up (the CPU: perf_counter), ms per call and per position, and the bytes of W over
the call's time (GB/s).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def timed(fn, cuda: bool, repeats: int) -> float:
    """Median seconds of one call."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a 4,096 x 128 fp32 head on the CPU")
    ap.add_argument("--positions", default="1,2,4,8,16,32")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cuda = not args.tiny
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny on the CPU")
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    v, d = (128256, 2048) if cuda else (4096, 128)
    g = torch.Generator(device=device).manual_seed(0)
    w = (torch.randn(v, d, generator=g, device=device) / d ** 0.5).to(dtype)
    rows = []
    for k in (int(x) for x in args.positions.split(",")):
        h = torch.randn(k, d, generator=g, device=device).to(dtype)
        s = timed(lambda: torch.nn.functional.linear(h, w).argmax(-1), cuda, args.repeats)
        rows.append({"positions": k, "ms": 1e3 * s, "ms_per_position": 1e3 * s / k,
                     "gb_s": w.numel() * w.element_size() / s / 1e9})
    one = rows[0]["ms"]
    for r in rows:
        r["cost_vs_one_position"] = r["ms"] / one
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype).replace("torch.", ""),
           "vocab": v, "hidden": d, "repeats": args.repeats, "rows": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
