"""`flashhead demo`: the embedded default model end to end, dense vs FlashHead side by side."""
from __future__ import annotations

import importlib.util
import json
import sys

HELP = "build (cached) the default model's FlashHead and compare it with the dense head"
EPILOG = """examples:
  flashhead demo                          # Gemma-3-270M: build once (cached), then compare
  flashhead demo --model smollm2-135m --max-new-tokens 20 --json
  flashhead demo --backend transformers   # the body in transformers instead of llama.cpp
"""

PROMPTS = ["The capital of France is", "The three primary colors are", "Water boils at"]


def add_arguments(p):
    from ..sources import ALIASES, DEFAULT_MODEL

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
    from ..config import FlashHeadError
    from ..metrics import common_prefix
    from ..generation import generate
    from ..layout import load_assets
    from ..integrations import hf
    from ..cache import cache_root

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
    backend = args.backend
    if backend == "auto":
        backend = "llamacpp" if importlib.util.find_spec("llama_cpp") else "transformers"
    runs = {}
    if backend == "llamacpp":
        from ..integrations.llamacpp import LlamaCpp
        from ..sources import gguf_of

        model = LlamaCpp(gguf_of(out), out, max_sequences=len(prompts),
                         n_ctx=len(prompts) * (args.max_new_tokens + 128))
        head = model.head
        for name in ("dense", "flashhead"):
            model.generate(prompts[:1], max_new_tokens=2, dense=name == "dense")  # warm-up
            runs[name] = model.generate(prompts, max_new_tokens=args.max_new_tokens, dense=name == "dense")
        model.close()
    else:
        model, tok = hf.load(out)
        head = model.lm_head.flashhead
        for name, use in (("dense", False), ("flashhead", True)):
            model.lm_head.use_flashhead = use
            generate(model, tok, prompts[:1], max_new_tokens=2)  # warm-up
            runs[name] = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens)
    rows = []
    for i, prompt in enumerate(prompts):
        d, f = runs["dense"], runs["flashhead"]
        rows.append({"prompt": prompt, "dense": d["texts"][i], "flashhead": f["texts"][i],
                     "identical_prefix_tokens": common_prefix(d["token_ids"][i], f["token_ids"][i]),
                     "new_tokens": max(d["new_tokens"][i], f["new_tokens"][i])})
    summary = {"model": args.model, "model_dir": str(out), "backend": backend, "probes": head.probes,
               "clusters": head.num_clusters,
               "dense_tokens_per_second": runs["dense"]["tokens_per_second"],
               "flashhead_tokens_per_second": runs["flashhead"]["tokens_per_second"],
               "speedup": runs["flashhead"]["tokens_per_second"] / runs["dense"]["tokens_per_second"],
               "prompts": rows}
    if args.json:
        print(json.dumps(summary))
        return
    for r in rows:
        print(f"\nprompt     : {r['prompt']}\ndense      :{r['dense']!r}\nflashhead  :{r['flashhead']!r}\n"
              f"same first : {r['identical_prefix_tokens']} of {r['new_tokens']} tokens")
    print(f"\n{args.model} in {backend}: {summary['clusters']} clusters, probes {summary['probes']} | greedy batch of "
          f"{len(prompts)}: dense {summary['dense_tokens_per_second']:.1f} tok/s, FlashHead "
          f"{summary['flashhead_tokens_per_second']:.1f} tok/s ({summary['speedup']:.2f}x)")
