"""CPU timing of the FlashHead step vs the dense head (Gemma-3-270M head, fp32, batch 1).

    python benchmarks/kernels_cpu.py [--reps 15] [--threads 2]

Head: token_embd of the Gemma-3-270M GGUF (flashhead.sources alias gemma-3-270m), read with
gguf and cached as safetensors in the flashhead cache. Clusters: random balanced blocks of 16
(timing depends on the number of rows gathered, not on which). Before every timed call a 400 MB
buffer is written so that neither head runs from cache (in a model the body evicts it).
Median of --reps calls, dense and FlashHead interleaved in one run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from flashhead import ClusterIndex, FlashHead, FlashHeadConfig


def gemma_head() -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    from flashhead.sources import _alias_gguf, cache_root
    path = cache_root() / "bench" / "gemma3_270m_head.safetensors"
    if not path.is_file():
        import gguf
        import numpy as np
        r = gguf.GGUFReader(_alias_gguf("gemma-3-270m"))
        t = next(t for t in r.tensors if t.name == "token_embd.weight")
        w = torch.from_numpy(np.ascontiguousarray(gguf.dequantize(t.data, t.tensor_type))).float()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"head": w}, str(path))
    return load_file(str(path))["head"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w = gemma_head()
    v, d = w.shape
    k = v // 16
    assign = torch.randperm(v, generator=torch.Generator().manual_seed(0)) // 16
    cent = torch.zeros(k, d).index_add_(0, assign, w) / 16
    flush = torch.empty(100 * 2 ** 20)
    h = torch.randn(1, d)

    def t(fn):
        fn()
        out = []
        for _ in range(args.reps):
            flush.add_(1.0)
            t0 = time.perf_counter(); fn(); out.append(time.perf_counter() - t0)
        return statistics.median(out) * 1e3

    print(f"Gemma-3-270M head {v}x{d} fp32, batch 1, threads {args.threads}, median of {args.reps} (ms)")
    print(f"{'P':>5s} {'quant':5s} {'dense':>7s} {'torch g':>8s} {'cpu g':>7s} {'cpu lgt':>8s} {'dense/cpu g':>11s} {'dense/cpu lgt':>13s}")
    with torch.inference_mode():
        for quant in ("none", "int8"):
            idx = ClusterIndex(FlashHeadConfig(probes=256, quantization=quant), assign, cent, torch.zeros(k), {})
            head = FlashHead(w, idx, check_fingerprint=False)
            for p in (256, 1024):
                head.probes = p
                dense = t(lambda: torch.nn.functional.linear(h, w).argmax(1))
                head.kernel = "torch"
                ref = t(lambda: head.greedy(h))
                head.kernel = "cpu"
                g = t(lambda: head.greedy(h))
                lg = t(lambda: head(h))
                print(f"{p:5d} {quant:5s} {dense:7.2f} {ref:8.2f} {g:7.2f} {lg:8.2f} {dense / g:11.1f} {dense / lg:13.1f}", flush=True)


if __name__ == "__main__":
    main()
