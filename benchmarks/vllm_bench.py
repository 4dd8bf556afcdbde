"""vLLM decode throughput, dense vs FlashHead, in one run (same machine, same settings).

    python benchmarks/vllm_bench.py [--model smollm2-135m] [--dir DIR] [--batch 1 8] [--tokens 64]
                                    [--tp 1 2] [--spec ngram|draft] [--dtype bfloat16] [--audit 64]

Builds (or reuses, --dir) a FlashHead directory, then for each engine and each batch size generates
--tokens greedy tokens per prompt (ignore_eos) and reports output tokens/s (best of --repeats) as a
Markdown table. Engines:
  default      dense (the base HF dir) and FlashHead, at each --tp (TP 2 binds one core per rank)
  --spec ngram dense and FlashHead targets, each without and with n-gram speculation (3 tokens)
  --spec draft the dense target alone, with itself as draft model, with its FlashHead directory as
               draft model (FlashHead as the drafter's head; the text stays the dense target's)
with the draft acceptance rate where there is a draft.
  --audit N    adds FlashHead with the context off and FlashHead with the live audit on every N-th
               call (hf_overrides flash_head_audit), with the share of rows whose top-1 agreed
"""
import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


def run(model_dir, batches, tokens, repeats, extra, tp=1, rpc=None):
    """-> (tokens/s per batch, token ids per batch, draft acceptance or None, `rpc` run in every
    worker via LLM.collective_rpc after the timed runs, or None)."""
    from vllm import LLM, SamplingParams

    bind = os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    if tp > 1:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i) for i in range(tp))
    llm = LLM(str(model_dir), kv_cache_memory_bytes=1 << 30, max_model_len=512, enforce_eager=True,
              seed=0, tensor_parallel_size=tp, disable_log_stats=False, **extra)
    os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
    if bind is not None:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    sp = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    llm.generate(["warm up"], sp, use_tqdm=False)
    rates, texts = {}, {}
    for b in batches:
        prompts = [f"Tell me story number {i}:" for i in range(b)]
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            out = llm.generate(prompts, sp, use_tqdm=False)
            n = sum(len(o.outputs[0].token_ids) for o in out)
            best = max(best, n / (time.perf_counter() - t))
        rates[b] = best
        texts[b] = [list(o.outputs[0].token_ids) for o in out]
    metrics = {m.name: getattr(m, "value", None) for m in llm.get_metrics()}
    drafted = metrics.get("vllm:spec_decode_num_draft_tokens")
    accepted = metrics.get("vllm:spec_decode_num_accepted_tokens")
    answers = llm.collective_rpc(rpc) if rpc is not None else None
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return rates, texts, (accepted / drafted if drafted else None), answers


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dir", help="an existing FlashHead directory (default: build one in a temp dir)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tp", type=int, nargs="+", default=[1])
    p.add_argument("--spec", choices=["ngram", "draft"])
    p.add_argument("--dtype", default="auto")
    p.add_argument("--audit", type=int, default=0, metavar="N")
    a = p.parse_args()
    from flashhead.build import build
    from flashhead.build.sources import resolve

    base = resolve(a.model)
    fh = Path(a.dir) if a.dir else build(base, Path(tempfile.mkdtemp()) / "fh", progress=False)
    common = {"dtype": a.dtype}
    # (name, directory, engine arguments, TP size, the row whose tokens this one is compared with)
    if a.spec == "ngram":
        engines = [(f"{n}{s}", d, {**common, **({"speculative_config": NGRAM} if s else {})}, 1, 2 * i)
                   for i, (n, d) in enumerate([("dense", base), ("FlashHead", fh)]) for s in ["", " + n-gram"]]
    elif a.spec == "draft":
        draft = lambda d: {"speculative_config": {"method": "draft_model", "model": str(d),  # noqa: E731
                                                  "num_speculative_tokens": 3}}
        engines = [("dense target", base, common, 1, 0),
                   ("dense target + dense draft", base, {**common, **draft(base)}, 1, 0),
                   ("dense target + FlashHead draft", base, {**common, **draft(fh)}, 1, 0)]
    else:   # FlashHead at TP n is compared with FlashHead at the first TP size
        engines = [(f"{n}, TP {tp}", d, common, tp, j) for tp in a.tp
                   for j, (n, d) in enumerate([("dense", base), ("FlashHead", fh)])]
        if a.audit:
            engines += [("FlashHead, context off", fh, {**common, "hf_overrides": {"flash_head_context_probes": 0}}, 1, 0),
                        (f"FlashHead + audit 1/{a.audit}", fh, {**common, "hf_overrides": {"flash_head_audit": a.audit}}, 1, 1)]
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"   # collective_rpc(counts): a module function
    from flashhead.integrations.vllm.logits import counts

    results = []
    for name, d, extra, tp, ref in engines:
        rates, texts, acc, answers = run(d, a.batch, a.tokens, a.repeats, extra, tp,
                                         counts if "audit" in name else None)
        if answers:
            c = answers[0]
            name += f" (top-1 = dense on {c['agreed']}/{c['checked']} rows)"
        results.append((name, rates, texts, acc, ref))
    print(f"\n{a.model}, dtype {a.dtype}, {a.tokens} greedy tokens per prompt, best of {a.repeats}\n")
    print("| engine | batch | tok/s | vs first row | same tokens as row | draft acceptance |")
    print("|---|---:|---:|---:|---|---:|")
    for name, rates, texts, acc, ref in results:
        for b in a.batch:
            same = sum(x == y for x, y in zip(texts[b], results[ref][2][b]))
            print(f"| {name} | {b} | {rates[b]:.1f} | {rates[b] / results[0][1][b]:.2f}x | "
                  f"{same}/{b} (row {results[ref][0]!r}) | {'-' if acc is None else f'{acc:.0%}'} |")


if __name__ == "__main__":
    main()
