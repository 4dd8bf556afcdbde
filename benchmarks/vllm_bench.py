"""vLLM decode throughput, dense vs FlashHead, in one run (same machine, same settings).

    python benchmarks/vllm_bench.py [--model smollm2-135m] [--batch 1 8] [--tokens 64]

Builds (or reuses, --dir) a FlashHead directory, then for each engine - dense (the base HF dir)
and FlashHead - and each batch size generates --tokens greedy tokens per prompt (ignore_eos) and
reports output tokens/s (best of --repeats). Prints a Markdown table.
"""
import argparse
import gc
import tempfile
import time
from pathlib import Path


def run(model_dir, batches, tokens, repeats, extra):
    from vllm import LLM, SamplingParams

    llm = LLM(str(model_dir), kv_cache_memory_bytes=1 << 30, max_model_len=512, enforce_eager=True,
              seed=0, **extra)
    sp = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    llm.generate(["warm up"], sp, use_tqdm=False)
    rates = {}
    for b in batches:
        prompts = [f"Tell me story number {i}:" for i in range(b)]
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            out = llm.generate(prompts, sp, use_tqdm=False)
            n = sum(len(o.outputs[0].token_ids) for o in out)
            best = max(best, n / (time.perf_counter() - t))
        rates[b] = best
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return rates


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dir", help="an existing FlashHead directory (default: build one in a temp dir)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    from flashhead.build import build
    from flashhead.sources import resolve

    base = resolve(a.model)
    fh = Path(a.dir) if a.dir else build(base, Path(tempfile.mkdtemp()) / "fh", progress=False)
    dense = run(base, a.batch, a.tokens, a.repeats, {})
    flash = run(fh, a.batch, a.tokens, a.repeats, {})
    print(f"\n| model | batch | dense tok/s | FlashHead tok/s | ratio |\n|---|---|---|---|---|")
    for b in a.batch:
        print(f"| {a.model} | {b} | {dense[b]:.1f} | {flash[b]:.1f} | {flash[b] / dense[b]:.2f} |")


if __name__ == "__main__":
    main()
