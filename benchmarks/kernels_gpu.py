"""GPU check + timing of the FlashHead kernels vs the dense head (one call on the GPU machine).

    python benchmarks/kernels_gpu.py            # correctness table, then a timing table
    python benchmarks/kernels_gpu.py --sweep    # first: launch configurations per kernel, the
                                                # fastest set into triton_kernels.TUNED for the run

Random bf16 weights (timing does not depend on the values; say so when quoting), random balanced
clusters of 16, P=256, int8 stage 1 (the default). Each step is captured in a CUDA graph; L2 is
flushed (a 256 MB memset) before every timed replay, so nothing runs from cache; median of REPS
replays with CUDA events. Floors: bytes that must be read (dense: V*d*2; FlashHead: K*d int8
centroids + K*4 scales + N*P*cs*d*2 rows) over the device-to-device copy bandwidth measured here.
"""
from __future__ import annotations

import statistics
import sys

import torch

from flashhead import ClusterIndex, FlashHead, FlashHeadConfig

SHAPES = {"llama-3.2-1b": (128256, 2048), "gemma-3-1b": (262144, 1152), "qwen3-0.6b": (151936, 1024)}
REPS = 100


def make_head(v, d, probes=256, quant="int8", dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(v, d, device="cuda", generator=g).to(dtype) * 0.02
    k = -(-v // 16)
    assign = (torch.randperm(v, device="cuda", generator=g) // 16)
    cent = torch.zeros(k, d, device="cuda").index_add_(0, assign, w.float())
    cent /= torch.bincount(assign, minlength=k).clamp_min(1)[:, None]
    idx = ClusterIndex(FlashHeadConfig(probes=min(probes, k), quantization=quant), assign.cpu(), cent.cpu(),
                       torch.zeros(k), {})
    return w, FlashHead(w, idx, check_fingerprint=False)


def check():
    rows = []
    for name, (v, d) in list(SHAPES.items()) + [("small-all-probed", (4000 - 5, 256))]:
        for quant in ("none", "int8"):
            w, head = make_head(v, d, quant=quant)
            if name.startswith("small"):
                head.probes = head.num_clusters
            for n in (1, 5, 16):
                h = torch.randn(n, d, device="cuda").bfloat16()
                head.kernel = "torch"
                s_r, tok_r, z_r = head.probe(h)
                g_r, l_r = head.greedy(h), head(h)
                head.kernel = "triton"
                s_t, tok_t, z_t = head.probe(h)
                g_t, l_t = head.greedy(h), head(h)
                same_set = torch.equal(tok_r.sort(1).values, tok_t.sort(1).values)
                zerr = float((z_t.gather(1, tok_t.argsort(1)) - z_r.gather(1, tok_r.argsort(1))).abs().max())
                serr = float(((s_t - s_r).norm() / s_r.norm()))
                lerr = float((l_t - l_r).abs().max())
                dense = (h.float() @ w.float().T)
                ok = same_set and torch.equal(g_t, g_r) and lerr < 1e-3 and torch.equal(l_t.argmax(1), g_t)
                if name.startswith("small"):
                    ok = ok and torch.equal(g_t, dense.argmax(1)) and float((l_t - dense).abs().max()) < 1e-3
                rows.append((name, quant, n, same_set, bool(torch.equal(g_t, g_r)), serr, zerr, lerr, ok))
    print(f"{'shape':18s} {'quant':5s} {'N':>3s} {'set==':>6s} {'ids==':>6s} {'s relerr':>9s} {'z maxerr':>9s} {'logit err':>9s} ok")
    for r in rows:
        print(f"{r[0]:18s} {r[1]:5s} {r[2]:3d} {str(r[3]):>6s} {str(r[4]):>6s} {r[5]:9.2e} {r[6]:9.2e} {r[7]:9.2e} {r[8]}")
    return all(r[-1] for r in rows)


def check_topk():
    """The top-P kernel against torch.topk's threshold: same selected set (ties: lowest ids first)."""
    from flashhead.kernels import triton_kernels as tk
    ok = True
    for k, p in ((8016, 256), (9496, 256), (16384, 509), (3000, 1), (3000, 3000)):
        for kind in ("randn", "ties", "lognormal"):
            s = torch.randn(16, k, device="cuda")
            if kind == "ties":
                s = (s * 4).round() / 4               # many exact ties at the threshold
            elif kind == "lognormal":
                s = s.exp() * 1e3 - 5
            thr = s.topk(p, 1).values[:, -1:]
            gt = s > thr
            eq = (s == thr) & ((s == thr).cumsum(1) <= p - gt.sum(1, keepdim=True))
            want = gt | eq
            top, slot, _ = tk.topk(s, p)
            got = torch.zeros_like(want).scatter_(1, top.long(), True)
            same = torch.equal(got, want) and torch.equal(slot >= 0, want)
            ok &= same
            if not same:
                print(f"topk MISMATCH K={k} P={p} {kind}")
    print("top-P selections equal torch.topk's" if ok else "top-P selections DIFFER from torch.topk's")
    return ok


def graph_time(fn, flush):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
    for a, b in ev:
        flush.zero_()
        a.record(); g.replay(); b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev) * 1e3  # µs


def bandwidth():
    x = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(10):
        y.copy_(x)
    b.record(); torch.cuda.synchronize()
    return 2 * 10 * x.numel() / (a.elapsed_time(b) * 1e-3)  # bytes/s, read + write


def timing():
    bw = bandwidth()
    flush = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device="cuda")
    print(f"\ncopy bandwidth {bw / 1e12:.2f} TB/s; {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print(f"{'shape':14s} {'N':>3s} {'dense':>8s} {'dense g':>8s} {'ref g':>8s} {'fh g':>8s} {'fh lgt':>8s} "
          f"{'g/dense':>7s} {'floor':>7s} {'g/floor':>7s}")
    for name, (v, d) in SHAPES.items():
        w, head = make_head(v, d)
        batches = (1, 2, 4, 8, 16, 32, 64) if name == "llama-3.2-1b" else (1, 16)
        for n in batches:
            h = torch.randn(n, d, device="cuda").bfloat16()
            t_dense = graph_time(lambda: torch.nn.functional.linear(h, w), flush)
            t_dense_g = graph_time(lambda: torch.nn.functional.linear(h, w).argmax(1), flush)
            head.kernel = "torch"
            t_ref = graph_time(lambda: head.greedy(h), flush) if n <= 16 else float("nan")
            head.kernel = "triton"
            t_g = graph_time(lambda: head.greedy(h), flush)
            t_l = graph_time(lambda: head(h), flush)
            k = head.num_clusters
            floor = (k * d + k * 4 + min(n * head.probes * 16, v) * d * 2) / bw * 1e6
            print(f"{name:14s} {n:3d} {t_dense:8.1f} {t_dense_g:8.1f} {t_ref:8.1f} {t_g:8.1f} {t_l:8.1f} "
                  f"{t_g / t_dense_g:7.2f} {floor:7.1f} {t_g / floor:7.2f}", flush=True)


def sweep():
    """Per-kernel launch configurations (Llama shape, N=1, int8 stage 1); the fastest top-P and
    stage-2 configurations go to TUNED for the rest of the run."""
    from flashhead.kernels import triton_kernels as tk
    flush = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device="cuda")
    w, head = make_head(*SHAPES["llama-3.2-1b"])
    h = torch.randn(1, w.shape[1], device="cuda").bfloat16()
    q, sc = head.stage1.q, head.stage1.scale
    print("\nsweep, llama-3.2-1b, N=1, int8 stage 1 (µs)")
    best = {}

    def keep(name, t, cfg, label):
        print(f"{label}: {t:.1f}", flush=True)
        if name not in best or t < best[name][0]:
            best[name] = (t, cfg)

    print(f"stage1 torch bf16 matmul (bf16 centroids): {graph_time(lambda: h @ head.stage1.q.bfloat16().T, flush):.1f}")
    tiny = torch.zeros(1, device="cuda")
    print(f"null (a one-element fill in a graph): {graph_time(lambda: tiny.fill_(1.0), flush):.1f}")
    for bk in (16, 32, 64, 128):
        for bd in (128, 256, 512):
            for ns in (2, 3, 4, 5):
                for nw in (4, 8):
                    cfg = dict(block_k=bk, block_d=bd, num_stages=ns, num_warps=nw)
                    try:
                        keep("stage1", graph_time(lambda: tk.stage1(h, q, sc, **cfg), flush), cfg, f"stage1 {cfg}")
                    except Exception as e:  # out of shared memory / registers
                        print(f"stage1 {cfg}: {type(e).__name__}")
    s = tk.stage1(h, q, sc)
    for nw in (4, 8, 16):
        print(f"topk num_warps={nw}: {graph_time(lambda: tk.topk(s, head.probes, nw), flush):.1f}")
    for kk in (9496, 16384):   # Qwen3-0.6B's and Gemma-3-1B's K: blocks of 16,384 lanes
        s16 = torch.randn(16, kk, device="cuda")
        for nw in (8, 16, 32):
            for n in (1, 16):
                print(f"topk K={kk} N={n} num_warps={nw}: {graph_time(lambda: tk.topk(s16[:n], 256, nw), flush):.1f}")
    print(f"torch.topk: {graph_time(lambda: s.topk(head.probes, dim=1, sorted=False), flush):.1f}")
    top, slot, b = tk.topk(s, head.probes)
    for cpb, bd, nw in ((1, 256, 2), (1, 512, 2), (1, 512, 4), (1, 1024, 4), (1, 1024, 8), (1, 2048, 8),
                        (2, 512, 4), (2, 1024, 8)):
        for ns in (1, 2, 3, 4):
            cfg = dict(cpb=cpb, block_d=bd, num_warps=nw, num_stages=ns)
            keep("stage2", graph_time(lambda: tk.stage2(h, w, head.step.block_ids32, top, b, **cfg), flush), cfg,
                 f"stage2 {cfg}")
    for name, (t, cfg) in best.items():
        tk.TUNED[name] = cfg
        print(f"best {name}: {cfg} {t:.1f} µs")


if __name__ == "__main__":
    torch.manual_seed(0)
    if "--sweep" in sys.argv:
        sweep()
    ok = check_topk() and check()
    print("ALL CORRECT" if ok else "MISMATCH")
    if "--check-only" not in sys.argv:
        with torch.inference_mode():
            timing()
