"""`flashhead demo`: the embedded default model end to end: dense, FlashHead and verified FlashHead."""
from __future__ import annotations

import json
import sys

HELP = "build (cached) the default model's FlashHead and compare it with the dense head"
EPILOG = """examples:
  flashhead demo                          # Gemma-3-270M: build once (cached), then compare
  flashhead demo --model smollm2-135m --max-new-tokens 20 --json
  flashhead demo --backend transformers   # the body in transformers instead of llama.cpp
"""

PROMPTS = ["The capital of France is", "The three primary colors are", "Water boils at"]
MODES = {"dense": "the dense head", "fast": "FlashHead", "exact": "FlashHead, verified (exact)"}


def add_arguments(p):
    from ..build.sources import ALIASES, DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(ALIASES), help="default %(default)s")
    p.add_argument("--prompt", action="append", help="replace the built-in prompts (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached FlashHead directory")
    p.add_argument("--backend", choices=["auto", "llamacpp", "transformers"], default="auto",
                   help="where the body runs; auto (default): llama.cpp on the model's GGUF file when "
                        "llama-cpp-python is installed (the fastest path here), else transformers")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    from ..build import build
    from ..core.cache import cache_root
    from ..core.config import FlashHeadError
    from ..core.layout import load_assets
    from ..core.metrics import common_prefix
    from ..tools.model import load

    out = cache_root() / "models" / f"{args.model}-flashhead"
    try:
        load_assets(out)
        cached = not args.rebuild
    except FlashHeadError:
        cached = False
    if not cached:
        print(f"building {out} (once) ...", file=sys.stderr, flush=True)
        build(args.model, out, progress=not args.json)
    prompts = args.prompt or PROMPTS
    model = load(out, args.backend, max_sequences=len(prompts),
                 n_ctx=args.max_new_tokens + 160)
    runs = {}
    try:
        for mode in MODES:
            model.generate(prompts[:1], max_new_tokens=2, mode=mode)      # warm-up
            runs[mode] = model.generate(prompts, max_new_tokens=args.max_new_tokens, mode=mode)
    finally:
        model.close()
    head = model.head
    d = runs["dense"]
    rows = []
    for i, prompt in enumerate(prompts):
        rows.append({"prompt": prompt, **{m: runs[m]["texts"][i] for m in MODES},
                     "identical_prefix_tokens": common_prefix(d["token_ids"][i], runs["fast"]["token_ids"][i]),
                     "exact_equals_dense": runs["exact"]["token_ids"][i] == d["token_ids"][i],
                     "new_tokens": max(d["new_tokens"][i], runs["fast"]["new_tokens"][i])})
    tps = {m: runs[m]["tokens_per_second"] for m in MODES}
    summary = {"model": args.model, "model_dir": str(out), "backend": d["backend"], "probes": head.probes,
               "clusters": head.num_clusters, "dense_tokens_per_second": tps["dense"],
               "flashhead_tokens_per_second": tps["fast"], "exact_tokens_per_second": tps["exact"],
               "speedup": tps["fast"] / tps["dense"], "exact_speedup": tps["exact"] / tps["dense"],
               "exact_acceptance": runs["exact"]["exact"]["acceptance"], "prompts": rows}
    if args.json:
        print(json.dumps(summary))
        return
    for r in rows:
        print(f"\nprompt     : {r['prompt']}\ndense      :{r['dense']!r}\nflashhead  :{r['fast']!r}\n"
              f"exact      :{r['exact']!r}\nsame first : {r['identical_prefix_tokens']} of {r['new_tokens']} "
              f"tokens (fast); exact = dense: {'yes' if r['exact_equals_dense'] else 'NO'}")
    print(f"\n{args.model} in {d['backend']}: {summary['clusters']} clusters, probes {summary['probes']} | greedy "
          f"batch of {len(prompts)}: dense {tps['dense']:.1f} tok/s, FlashHead {tps['fast']:.1f} tok/s "
          f"({summary['speedup']:.2f}x), exact {tps['exact']:.1f} tok/s ({summary['exact_speedup']:.2f}x, "
          f"{summary['exact_acceptance']:.1%} of FlashHead's tokens kept)")
