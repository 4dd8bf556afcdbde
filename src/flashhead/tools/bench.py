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

from ..data import corpus
from ..core import metrics
from ..core.config import FlashHeadConfig, FlashHeadError
from ..backends import choose
from ..backends.transformers import TransformersBackend
from ..build.clustering import balanced_kmeans
from ..core.head import FlashHead
from ..core.index import ClusterIndex, fingerprint
from ..core.layout import load_assets
from ..core.metrics import common_prefix
from ..data.corpus import DOMAINS, LANGUAGES
from ..data.hidden import teacher_forced
from .generate import generate
from .model import Model, load

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


def machine(device: str = "cpu", bw: float | None = None) -> dict:
    """The host a number was measured on (its CPU's name and instruction set, threads, torch), and
    the measured copy bandwidth where the benchmark measured it."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "device": device}
    if bw is not None:
        info["copy_bandwidth_gb_s"] = round(bw, 2)
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
        flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
        # hosts of one name differ (AVX2-only or AVX-512): a number names its host's instruction set
        info["isa"] = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "neither AVX2 nor AVX-512"
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


def bench_decode(model, batches, new_tokens: int, repeats: int = 3, exact: bool = False,
                 prompt: str | None = None, reference=None, audit: int = 0) -> list[dict]:
    """Decode tokens/s per batch size on one Model (tools/model.py), its backend's dense head vs
    FlashHead (and verified decoding with `exact`), alternating runs in one process: B copies of
    the prompt decoded together, greedy, `new_tokens` each (end tokens ignored), median of
    `repeats`. Per token: the body, the head and (exact) the check; acceptance and mean K.
    `reference`: another backend whose own dense decode is timed alongside (llama.cpp under its
    default settings), and the speedups against it. `audit`: the fast mode with the live audit
    (every N-th token also through the dense head) timed alongside: its cost and agreement."""
    prompt = prompt or PROMPT
    modes = ["dense", "fast"] + (["exact"] if exact else []) + (["audit"] if audit else [])
    rows = []
    for b in batches:
        prompts = [prompt] * b
        runs = {m: [] for m in modes}
        ref = []

        def run(m, n):
            if m == "reference":
                return generate(reference, None, prompts, max_new_tokens=n, mode="dense", ignore_end=True)
            if m == "audit":
                return model.generate(prompts, max_new_tokens=n, mode="fast", ignore_end=True, audit=audit)
            return model.generate(prompts, max_new_tokens=n, mode=m, ignore_end=True)
        sides = modes + (["reference"] if reference is not None else [])
        for m in sides:                                    # warm-up
            run(m, 4)
        for _ in range(repeats):
            for m in sides:
                (ref if m == "reference" else runs[m]).append(run(m, new_tokens))
        med = {m: statistics.median(r["decode_tokens_per_second"] for r in runs[m]) for m in modes}
        step_ms = {m: 1e3 * b / med[m] for m in modes}     # per decode step (all B sequences)

        def per_token(m, key):        # ms per token decoded after the prefill (all sequences')
            return 1e3 * statistics.median(r[key] for r in runs[m]) / (b * (new_tokens - 1))
        body_ms = b * per_token("fast", "body_seconds")        # per decode step, like step_ms
        d, f = runs["dense"][-1]["token_ids"], runs["fast"][-1]["token_ids"]
        row = {"batch": b, "dense_tok_s": med["dense"], "flashhead_tok_s": med["fast"],
               "speedup": med["fast"] / med["dense"], "dense_step_ms": step_ms["dense"],
               "flashhead_step_ms": step_ms["fast"], "flashhead_body_ms": body_ms,
               "flashhead_head_ms": b * per_token("fast", "head_seconds"), "bound": step_ms["dense"] / body_ms,
               "identical_prefix_tokens": min(common_prefix(x, y) for x, y in zip(d, f)),
               "new_tokens": new_tokens, "probes": model.head.probes}
        if ref:
            r_tok_s = statistics.median(r["decode_tokens_per_second"] for r in ref)
            row.update({"defaults_dense_tok_s": r_tok_s, "speedup_vs_defaults": med["fast"] / r_tok_s,
                        "defaults_identical_to_dense": all(r["token_ids"] == d for r in ref)})
            if exact:
                row["exact_speedup_vs_defaults"] = med["exact"] / r_tok_s
        if exact:
            e = runs["exact"]
            stats = e[-1]["exact"]
            row.update({"exact_tok_s": med["exact"], "exact_speedup": med["exact"] / med["dense"],
                        "exact_step_ms": step_ms["exact"],
                        "exact_body_ms": per_token("exact", "body_seconds"),
                        "exact_head_ms": per_token("exact", "head_seconds"),
                        "exact_check_ms": per_token("exact", "check_seconds"),
                        "exact_rejected_steps_per_token": stats["rejected_steps"] / (b * new_tokens),
                        "acceptance": statistics.median(r["exact"]["acceptance"] for r in e),
                        "mean_draft": statistics.median(r["exact"]["mean_draft"] for r in e),
                        "exact_identical_to_dense": all(r["token_ids"] == d for r in e)})
        if audit:
            a = runs["audit"]
            row.update({"audit_every": audit, "audit_tok_s": med["audit"],
                        "audit_cost": 1 - med["audit"] / med["fast"],
                        # the audit's own dense passes over the decode time: direct, free of run-to-run noise
                        "audit_share": statistics.median(r["audit"]["seconds"] / (r["seconds"] - r["prefill_seconds"])
                                                         for r in a),
                        "audit_checked": sum(r["audit"]["checked"] for r in a),
                        "audit_agreement": sum(r["audit"]["agreed"] for r in a) / max(sum(r["audit"]["checked"] for r in a), 1)})
        rows.append(row)
    return rows


def bench_random(vocab: int, hidden: int, batches=(1, 4, 16, 64), device: str = "cpu", dtype: str = "float32",
                 probes: int | None = None, repeats: int = 20) -> dict:
    """Head-level timing for a head of a given shape with random weights and random hidden states
    (timing only: the cost of a step does not depend on the values). Clustered with the real build."""
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


def domain_prompt(domain: str, words: int = 48) -> str:
    """A decode benchmark's prompt from real text: the first `words` words of a suite domain's (or
    language's) eval documents (corpus.py), for scripts without spaces the first 2 x `words`
    characters."""
    if domain not in DOMAINS + LANGUAGES or domain == "chat":
        raise FlashHeadError(f"unknown domain {domain!r}: choose from "
                             f"{', '.join(d for d in DOMAINS + LANGUAGES if d != 'chat')}")
    text = " ".join(corpus.load("eval", domain)[:8])
    split = text.split()
    return " ".join(split[:words]) if len(split) >= words else text[: 2 * words]


def bench(model_dir, batches=(1, 4, 16, 64), device: str = "cpu", dtype: str = "float32",
          probes: int | None = None, new_tokens: int = 32, repeats: int = 20, decode_repeats: int = 3,
          build: bool = True, decode: bool = True, prompt: str = PROMPT, backend: str = "transformers",
          gguf=None, exact: bool = False, decode_batches=None, arrange: bool = True, threads: int | None = None,
          audit: int = 0, context_probes: int | None = None) -> dict:
    """Benchmarks of a FlashHead model directory -> one dict. transformers: the head alone (dense vs
    FlashHead on real hidden states, per batch size) and decode; llama.cpp: decode on the GGUF
    file against llama.cpp's own dense head, and the memory FlashHead adds."""
    name = choose(backend)
    prompt = prompt or PROMPT
    _check(batches, repeats, new_tokens, device, dtype)
    decode_batches = list(decode_batches or [1])
    if name == "llamacpp":
        import llama_cpp

        if device != "cpu":
            raise FlashHeadError("the llama.cpp backend runs on the CPU here: leave out --device")
        n = max(decode_batches)
        model = load(model_dir, "llamacpp", gguf=gguf, probes=probes, arrange=arrange, threads=threads,
                     max_sequences=n, n_ctx=new_tokens + 1024, context_probes=context_probes)
        from ..backends.llamacpp import LlamaCppBackend

        # llama.cpp's own dense decode as a user runs it: its default settings (backends/llamacpp.py)
        reference = LlamaCppBackend(model.backend.path, n_ctx=new_tokens + 1024, threads=threads, max_sequences=n,
                                    flash_attn=-1, unified=True, repack=True)
        try:
            head, mem = model.head, model.memory()
            out = {"backend": "llamacpp", "model_dir": str(model_dir), "gguf": str(model.backend.path),
                   "llama_cpp_python": llama_cpp.__version__, "probes": head.probes,
                   "context_probes": head.context_probes,
                   "next_clusters": 0 if head.successors is None else head.successors.shape[1],
                   "clusters": head.num_clusters, "vocab": model.backend.vocab, "hidden": model.backend.hidden,
                   "head_form": "Q8_0 (in the GGUF file)" if mem["head_bytes_in_gguf"] else "fp32 copy",
                   "prompt": prompt, "prompt_tokens": len(model.backend.tokenize(prompt)),
                   "repeats": decode_repeats, "machine": machine("cpu", bandwidth("cpu")) | {"threads": model.backend.threads},
                   "memory": mem,
                   "decode": bench_decode(model, decode_batches, new_tokens, decode_repeats, exact, prompt,
                                          reference, audit)}
        finally:
            model.close()
            reference.close()
        return out
    torch_dtype = DTYPES[dtype]
    model = load(model_dir, "transformers", probes=probes, dtype=torch_dtype, threads=threads,
                 max_sequences=max(decode_batches), context_probes=context_probes)
    hf_model, tok = model.backend.model, model.backend.tokenizer
    if device != "cpu":           # the backend takes its device from the model's weight

        hf_model.to(device)
        model = Model(TransformersBackend(hf_model, tok, max(decode_batches)), hf_model.lm_head.flashhead, model_dir)
    lm = hf_model.lm_head
    head, weight = lm.flashhead, lm.weight.detach()
    # real hidden states: held-out text through the model's body. A batch of a decode step holds
    # different sequences, so its rows are drawn across the texts (consecutive positions of one
    # text probe more of the same clusters, which would flatter the CPU kernel's shared gather).

    H, _ = teacher_forced(hf_model, tok, corpus.load("eval"), max_positions=max(4 * max(batches), 1024))
    H = H[torch.randperm(H.shape[0], generator=torch.Generator().manual_seed(0))]
    if H.shape[0] < max(batches):
        H = H.repeat(-(-max(batches) // H.shape[0]), 1)
    H = H.to(device=device, dtype=torch_dtype)
    bw = bandwidth(device)
    out = {"backend": "transformers", "model": str(model_dir), "vocab": head.vocab, "hidden": head.hidden,
           "clusters": head.num_clusters, "cluster_size": head.cluster_size, "probes": head.probes,
           "quantization": head.config.quantization, "dtype": dtype, "device": device,
           "machine": machine(device, bw),
           "head": bench_head(head, weight, H, list(batches), device, bw, repeats=repeats)}
    if decode:
        out["prompt"], out["prompt_tokens"] = prompt, len(tok(prompt)["input_ids"])
        out["decode"] = bench_decode(model, decode_batches, new_tokens, decode_repeats, exact, prompt, audit=audit)
    if build:   # as recorded by `flashhead build` (calibration, clustering, probes; peak memory)

        recorded = load_assets(model_dir).build
        out["build"] = {"seconds": recorded.get("seconds"), "peak_rss_mb": recorded.get("peak_rss_mb"),
                        "iterations": head.config.iterations, "cluster_size": head.cluster_size}
    return out


def format_decode(result: dict) -> str:
    """Markdown: one row per batch size (and the exact mode's columns when measured)."""
    rows = result["decode"]
    exact = "exact_tok_s" in rows[0]
    head = ("| probes | batch | dense tok/s | FlashHead tok/s | speedup | dense step ms | FlashHead body ms | "
            "FlashHead head ms | free-head bound | same greedy tokens |")
    defaults = "defaults_dense_tok_s" in rows[0]
    if defaults:
        head += " llama.cpp defaults dense tok/s | speedup vs defaults |"
    if exact:
        head += (" exact tok/s | exact speedup" + (" (vs defaults)" if defaults else "") + " | acceptance | mean K | exact ms per token: body / head / check "
                 "| rejected steps per token | exact = dense |")
    audit = "audit_tok_s" in rows[0]
    if audit:
        head += " audit every | audit tok/s | audit's share of decode time | audit top-1 = dense |"
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['probes']} | {r['batch']} | {r['dense_tok_s']:.1f} | {r['flashhead_tok_s']:.1f} | "
                f"{r['speedup']:.2f}x | {r['dense_step_ms']:.2f} | {r['flashhead_body_ms']:.2f} | "
                f"{r['flashhead_head_ms']:.2f} | {r['bound']:.2f}x | {r['identical_prefix_tokens']} of {r['new_tokens']} |")
        if defaults:
            line += f" {r['defaults_dense_tok_s']:.1f} | {r['speedup_vs_defaults']:.2f}x |"
        if exact:
            vs = f" ({r['exact_speedup_vs_defaults']:.2f}x)" if defaults else ""
            line += (f" {r['exact_tok_s']:.1f} | {r['exact_speedup']:.2f}x{vs} | {r['acceptance']:.3f} | "
                     f"{r['mean_draft']:.1f} | {r['exact_body_ms']:.2f} / {r['exact_head_ms']:.2f} / "
                     f"{r['exact_check_ms']:.2f} | {r['exact_rejected_steps_per_token']:.3f} | "
                     f"{'yes' if r['exact_identical_to_dense'] else 'NO'} |")
        if audit:
            line += (f" {r['audit_every']} | {r['audit_tok_s']:.1f} | {100 * r['audit_share']:.1f}% | "
                     f"{100 * r['audit_agreement']:.1f}% of {r['audit_checked']} |")
        lines.append(line)
    return "\n".join(lines)


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
