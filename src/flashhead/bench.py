"""`flashhead bench`: time and bytes of FlashHead against the dense head, side by side in one run.

    head     the same hidden states H [N, d] (real text through the model's body), the same dtype and
             threads: dense logits h @ W.T vs FlashHead's full-vocab logits (what generate() uses)
             and its greedy fast path; warm-up, then `repeats` alternating runs, median and IQR.
    decode   transformers generate(), greedy, the same prompt and new-token count, dense head and
             FlashHead alternating in the same process.
    build    the build's own record (seconds per phase, peak memory) from the model directory.

Bandwidth: a large tensor copy is timed (read + write bytes / s) rather than assumed; the floor of a
head step is the bytes it must read divided by that bandwidth.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from . import corpus, metrics
from .config import FlashHeadError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FLUSH_BYTES = 256 * 2**20   # > every last-level cache here (32 MB L3 on the CPU, 50-60 MB L2 on H100/H200)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: str, warmup: int, repeats: int, flush: torch.Tensor | None = None) -> list[float]:
    """Seconds per call of `fn`, `repeats` samples after `warmup` calls; `flush` (a buffer larger
    than the last-level cache) is overwritten before each sample, outside the timed region."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for i in range(repeats):
        if flush is not None:
            flush.fill_(i)
            _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _summary(samples: list[float]) -> tuple[float, float]:
    """(median, interquartile range) in microseconds."""
    us = sorted(s * 1e6 for s in samples)
    if len(us) < 4:
        return statistics.median(us), us[-1] - us[0]
    q = statistics.quantiles(us, n=4)
    return statistics.median(us), q[2] - q[0]


def bandwidth(device: str, mbytes: int = 256, repeats: int = 5) -> float:
    """Measured memory bandwidth in GB/s: a copy of `mbytes` MB (counting read + write)."""
    n = mbytes * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    best = min(timeit(lambda: dst.copy_(src), device, 2, repeats))
    return 2 * n * 4 / best / 1e9


def machine(device: str, bw: float) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "device": device, "copy_bandwidth_gb_s": round(bw, 2)}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        info["cpu"] = platform.processor()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    info["load_average"] = os.getloadavg()
    return info


def bench_head(head, weight: torch.Tensor, H: torch.Tensor, batches: list[int], device: str,
               bw: float, warmup: int = 3, repeats: int = 20) -> list[dict]:
    """Per batch size: dense vs FlashHead on H[:batch] (weight and H already in the bench dtype).

    Cold cache, as in a decode step (where the model's body streams through the cache between
    two head calls): a 256 MB buffer is overwritten before every timed call."""
    elt = weight.element_size()
    v, d = weight.shape
    dense_bytes = v * d * elt
    flush = torch.empty(FLUSH_BYTES // 4, device=device)
    rows = []
    # time FlashHead itself at every batch size (the dense rule off)
    with torch.inference_mode(), head.flashhead_only():
        for b in batches:
            h = H[:b]
            dense = timeit(lambda: torch.nn.functional.linear(h, weight), device, warmup, repeats, flush)
            dense_g = timeit(lambda: torch.nn.functional.linear(h, weight).argmax(-1), device, warmup, repeats, flush)
            flash = timeit(lambda: head(h), device, warmup, repeats, flush)
            flash_g = timeit(lambda: head.greedy(h), device, warmup, repeats, flush)
            (d_us, d_iqr), (f_us, f_iqr) = _summary(dense), _summary(flash)
            dg_us, fg_us = _summary(dense_g)[0], _summary(flash_g)[0]
            cost = metrics.cost(v, d, head.num_clusters, head.cluster_size, head.probes,
                                head.config.quantization, weight.dtype)
            # stage 2 reads each distinct probed row once: the batch's union of probed clusters
            distinct = int(head.probe(h)[1].unique().numel())
            stage1 = head.stage1.nbytes(weight.dtype)
            stage2 = distinct * d * elt
            flash_bytes = stage1 + stage2
            rows.append({"batch": b, "distinct_rows": distinct, "dense_us": d_us, "dense_iqr_us": d_iqr,
                         "flashhead_us": f_us, "flashhead_iqr_us": f_iqr, "speedup": d_us / f_us,
                         "dense_greedy_us": dg_us, "flashhead_greedy_us": fg_us,
                         "greedy_speedup": dg_us / fg_us,
                         "dense_mb": dense_bytes / 1e6, "flashhead_mb": flash_bytes / 1e6,
                         "dense_gb_s": dense_bytes / d_us / 1e3, "flashhead_gb_s": flash_bytes / f_us / 1e3,
                         "dense_floor_us": dense_bytes / bw / 1e3, "flashhead_floor_us": flash_bytes / bw / 1e3,
                         "bytes_fraction_step": flash_bytes / dense_bytes,
                         "bytes_fraction": cost["bytes_fraction"]})
    return rows


def bench_decode(model, tokenizer, prompt: str, new_tokens: int, repeats: int = 3) -> dict:
    """Greedy decode tokens/s, dense head vs FlashHead, alternating runs in one process."""
    lm = model.lm_head
    enc = tokenizer(prompt, return_tensors="pt").to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  temperature=None, top_p=None, top_k=None, pad_token_id=pad)
    times = {True: [], False: []}
    with torch.inference_mode():
        for flag in (False, True):  # warm-up, both sides
            lm.use_flashhead = flag
            model.generate(**enc, **dict(kwargs, max_new_tokens=2, min_new_tokens=2))
        for _ in range(repeats):
            for flag in (False, True):
                lm.use_flashhead = flag
                t0 = time.perf_counter()
                model.generate(**enc, **kwargs)
                _sync(model.device.type)
                times[flag].append(time.perf_counter() - t0)
    lm.use_flashhead = True
    dense = new_tokens / statistics.median(times[False])
    flash = new_tokens / statistics.median(times[True])
    return {"prompt": prompt, "prompt_tokens": int(enc["input_ids"].shape[1]), "new_tokens": new_tokens,
            "repeats": repeats, "dense_tok_s": dense, "flashhead_tok_s": flash, "speedup": flash / dense,
            "dense_s": times[False], "flashhead_s": times[True]}


def bench_random(vocab: int, hidden: int, batches=(1, 4, 16, 64), device: str = "cpu", dtype: str = "float32",
                 probes: int | None = None, repeats: int = 20) -> dict:
    """Head-level timing for a head of a given shape with random weights and random hidden states
    (timing only: the cost of a step does not depend on the values). Clustered with the real build."""
    from .clustering import balanced_kmeans
    from .config import FlashHeadConfig
    from .head import FlashHead
    from .index import ClusterIndex, fingerprint

    _check(batches, repeats, 1, device, dtype)
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(vocab, hidden, generator=gen) / hidden ** 0.5).to(device=device, dtype=DTYPES[dtype])
    config = FlashHeadConfig()
    t0 = time.perf_counter()
    c = balanced_kmeans(weight.float(), config.cluster_size, config.iterations, config.seed, device=device,
                        progress=False)
    _sync(device)
    build_s = time.perf_counter() - t0
    index = ClusterIndex(config, c.assignments.cpu(), c.centroids.cpu(), fingerprint(weight))
    head = FlashHead(weight, index, probes)
    H = torch.randn(max(batches), hidden, generator=gen).to(device=device, dtype=DTYPES[dtype])
    bw = bandwidth(device)
    return {"model": f"random {vocab}x{hidden}", "vocab": vocab, "hidden": hidden, "clusters": head.num_clusters,
            "cluster_size": head.cluster_size, "probes": head.probes, "quantization": config.quantization,
            "dtype": dtype, "device": device, "machine": machine(device, bw),
            "head": bench_head(head, weight, H, list(batches), device, bw, repeats=repeats),
            "build": {"seconds": build_s, "iterations": config.iterations, "cluster_size": config.cluster_size}}


def _check(batches, repeats, new_tokens, device, dtype) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise FlashHeadError("--device cuda: no CUDA device visible to torch")
    if dtype not in DTYPES:
        raise FlashHeadError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if not batches or min(batches) < 1 or repeats < 1 or new_tokens < 1:
        raise FlashHeadError("need batch sizes >= 1, repeats >= 1, new tokens >= 1")


PROMPT = "The old lighthouse keeper climbed the stairs every evening and"


def bench(model_dir, batches=(1, 4, 16, 64), device: str = "cpu", dtype: str = "float32",
          probes: int | None = None, new_tokens: int = 32, repeats: int = 20, decode_repeats: int = 3,
          build: bool = True, decode: bool = True, prompt: str = PROMPT) -> dict:
    """Head-level, decode and build benchmarks of a FlashHead model directory -> one dict."""
    from .integrations import hf

    _check(batches, repeats, new_tokens, device, dtype)
    torch_dtype = DTYPES[dtype]
    model, tok = hf.load(model_dir, probes=probes, dtype=torch_dtype, device=device)
    lm = model.lm_head
    head, weight = lm.flashhead, lm.weight.detach()
    # real hidden states: held-out text through the model's body. A batch of a decode step holds
    # different sequences, so its rows are drawn across the texts (consecutive positions of one
    # text probe more of the same clusters, which would flatter the CPU kernel's shared gather).
    from .hidden import teacher_forced

    H, _ = teacher_forced(model, tok, corpus.load("eval"), max_positions=max(4 * max(batches), 1024))
    H = H[torch.randperm(H.shape[0], generator=torch.Generator().manual_seed(0))]
    if H.shape[0] < max(batches):
        H = H.repeat(-(-max(batches) // H.shape[0]), 1)
    H = H.to(device=device, dtype=torch_dtype)
    bw = bandwidth(device)
    out = {"model": str(model_dir), "vocab": head.vocab, "hidden": head.hidden, "clusters": head.num_clusters,
           "cluster_size": head.cluster_size, "probes": head.probes, "quantization": head.config.quantization,
           "dtype": dtype, "device": device, "machine": machine(device, bw),
           "head": bench_head(head, weight, H, list(batches), device, bw, repeats=repeats)}
    if decode:
        out["decode"] = bench_decode(model, tok, prompt, new_tokens, decode_repeats)
    if build:   # as recorded by `flashhead build` (calibration, clustering, probes; peak memory)
        from .layout import load_assets

        recorded = load_assets(model_dir).build
        out["build"] = {"seconds": recorded.get("seconds"), "peak_rss_mb": recorded.get("peak_rss_mb"),
                        "iterations": head.config.iterations, "cluster_size": head.cluster_size}
    return out


def plot(result: dict, path) -> None:
    """PNG: head µs (dense vs FlashHead, with the bandwidth floors) against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["head"]
    b = [r["batch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(b, [r["dense_us"] for r in rows], "o-", label="dense head")
    ax.plot(b, [r["flashhead_us"] for r in rows], "o-", label=f"FlashHead (P={result['probes']})")
    ax.plot(b, [r["dense_floor_us"] for r in rows], ":", color="C0", label="dense bandwidth floor")
    ax.plot(b, [r["flashhead_floor_us"] for r in rows], ":", color="C1", label="FlashHead bandwidth floor")
    for r in rows:
        ax.annotate(f"{r['speedup']:.1f}x", (r["batch"], r["flashhead_us"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (positions per step)")
    ax.set_ylabel("µs per head step (median)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = os.path.basename(os.path.normpath(str(result["model"])))
    ax.set_title(f"{name}: {result['vocab']}x{result['hidden']} {result['dtype']} on {result['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
