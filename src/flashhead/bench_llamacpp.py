"""`flashhead bench --backend llamacpp`: llama.cpp's own dense decode vs llama.cpp's body + FlashHead,
side by side in one process, on the same GGUF file, threads and prompt.

    decode   greedy generation of `new_tokens` after the prompt, per batch size (B copies of the
             prompt decoded together); dense and FlashHead alternate, `repeats` runs each; median
             decode tokens/s (prefill excluded) and the step split: llama.cpp's graph (`body`: for
             FlashHead it stops at result_norm) vs the head outside it.
    bound    dense step / FlashHead body step: the speedup a free head would give (Amdahl), and how
             much of it FlashHead reaches.
    memory   the GGUF file llama.cpp maps, the head tensor inside it, FlashHead's extra bytes.
"""
from __future__ import annotations

import platform
import statistics

import torch

from .bench import PROMPT   # the transformers decode benchmark's prompt: the same text for both
from .integrations.llamacpp import LlamaCpp
from .metrics import common_prefix


def bench_llamacpp(model_dir, gguf, batches=(1,), new_tokens: int = 64, repeats: int = 3,
                   probes: list[int] | None = None, threads: int | None = None, prompt: str = PROMPT,
                   arrange: bool = True) -> dict:
    """One row per (probe count, batch size); `probes` None: the directory's default. `arrange`:
    the head's rows in cluster order (LlamaCpp's default) or read in the file's order."""
    import llama_cpp

    model = LlamaCpp(gguf, model_dir, threads=threads, max_sequences=max(batches),
                     n_ctx=max(batches) * (new_tokens + 128), arrange=arrange)
    head = model.head
    rows = []
    for p in probes or [head.probes]:
        with head.flashhead_only(probes=p):
            rows += _rows(model, batches, new_tokens, repeats, prompt)
    mem = model.memory()
    out = {"backend": "llamacpp", "model_dir": str(model_dir), "gguf": str(model.path),
           "llama_cpp_python": llama_cpp.__version__, "probes": head.probes,
           "clusters": head.num_clusters, "vocab": model.vocab, "hidden": model.hidden,
           "head_form": "Q8_0 (in the GGUF file)" if mem["head_bytes_in_gguf"] else "fp32 copy",
           "prompt": prompt, "prompt_tokens": len(model.tokenize(prompt)), "repeats": repeats,
           "machine": {"cpu": platform.processor() or platform.machine(), "threads": model.threads,
                       "torch": torch.__version__},
           "memory": mem, "decode": rows}
    model.close()
    return out


def _rows(model, batches, new_tokens, repeats, prompt) -> list[dict]:
    rows = []
    for b in batches:
        prompts = [prompt] * b
        runs = {"dense": [], "flashhead": []}
        for side in runs:                                  # warm-up
            model.generate(prompts, max_new_tokens=4, dense=side == "dense")
        for _ in range(repeats):
            for side in runs:
                runs[side].append(model.generate(prompts, max_new_tokens=new_tokens, dense=side == "dense"))
        med = {s: statistics.median(r["decode_tokens_per_second"] for r in runs[s]) for s in runs}
        step_ms = {s: 1e3 * b / med[s] for s in runs}      # per decode step (all B sequences)
        # FlashHead's head: its share of each generate (one pick per new token, prefill's included)
        head_ms = 1e3 * statistics.median(r["head_seconds"] for r in runs["flashhead"]) / new_tokens
        body_ms = step_ms["flashhead"] - head_ms
        d, f = runs["dense"][-1]["token_ids"], runs["flashhead"][-1]["token_ids"]
        rows.append({"batch": b, "dense_tok_s": med["dense"], "flashhead_tok_s": med["flashhead"],
                     "speedup": med["flashhead"] / med["dense"],
                     "dense_step_ms": step_ms["dense"], "flashhead_step_ms": step_ms["flashhead"],
                     "flashhead_body_ms": body_ms, "flashhead_head_ms": head_ms,
                     "bound": step_ms["dense"] / body_ms,
                     "identical_prefix_tokens": min(common_prefix(x, y) for x, y in zip(d, f)),
                     "new_tokens": new_tokens, "probes": model.head.probes})
    return rows


def format_table(result: dict) -> str:
    """Markdown: one row per batch size."""
    lines = ["| probes | batch | dense tok/s | FlashHead tok/s | speedup | dense step ms | FlashHead body ms | "
             "FlashHead head ms | free-head bound | same greedy tokens |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["decode"]:
        lines.append(f"| {r['probes']} | {r['batch']} | {r['dense_tok_s']:.1f} | {r['flashhead_tok_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['dense_step_ms']:.2f} | {r['flashhead_body_ms']:.2f} | "
                     f"{r['flashhead_head_ms']:.2f} | {r['bound']:.2f}x | "
                     f"{r['identical_prefix_tokens']} of {r['new_tokens']} |")
    return "\n".join(lines)
