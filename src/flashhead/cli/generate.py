"""`flashhead generate`: run a FlashHead model directory in transformers."""
from __future__ import annotations

import json
import sys

HELP = "generate text with a FlashHead model directory (transformers, or llama.cpp on the GGUF)"
EPILOG = """examples:
  flashhead generate models/gemma-3-270m-flashhead --prompt "The capital of France is" --max-new-tokens 40
  flashhead generate models/gemma-3-270m-flashhead --prompt "..." --temperature 0.8 --top-p 0.95 --seed 1
  flashhead generate models/gemma-3-270m-flashhead --prompt "..." --dense      # same model, dense head
  flashhead generate models/smollm2-flashhead --prompt "a" --prompt "b" --json  # a batch of prompts
  flashhead generate models/gemma-3-270m-flashhead --prompt "..." --backend llamacpp   # body in llama.cpp
"""


def add_arguments(p):
    p.add_argument("model_dir", help="a FlashHead model directory (from `flashhead build`)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--probes", type=int, default=None, help="clusters probed per step (default: the model's)")
    p.add_argument("--dense", action="store_true", help="use the dense head instead (for comparison)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--backend", choices=["transformers", "llamacpp"], default="transformers",
                   help="where the model's body runs (default %(default)s); llamacpp runs the GGUF file")
    p.add_argument("--gguf", default=None, help="llamacpp: the GGUF file (default: the one the directory "
                   "was built from)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    from ..generation import check_arguments, generate
    from ..integrations import hf

    check_arguments(args.prompt, args.max_new_tokens, args.temperature, args.top_p, args.top_k)
    if args.backend == "llamacpp":
        res, probes = _llamacpp(args)
    else:
        model, tok = hf.load(args.model_dir, dense=args.dense, probes=args.probes)
        res = generate(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_p,
                       args.top_k, args.seed, args.chat)
        probes = None if args.dense else model.lm_head.flashhead.probes
    head = "dense" if args.dense else f"flashhead (probes={probes})"
    if args.json:
        print(json.dumps({"head": "dense" if args.dense else "flashhead", **res}))
        return
    for prompt, text in zip(args.prompt, res["texts"]):
        print(prompt + text)
    print(f"[{args.backend}, {head}: {sum(res['new_tokens'])} tokens in {res['seconds']:.2f} s, "
          f"{res['tokens_per_second']:.1f} tokens/s]", file=sys.stderr)


def _llamacpp(args):
    from ..generation import chat_prompts
    from ..integrations.llamacpp import LlamaCpp
    from ..sources import gguf_of

    model = LlamaCpp(gguf_of(args.model_dir, args.gguf), args.model_dir, probes=args.probes,
                     max_sequences=len(args.prompt),
                     n_ctx=max(512, len(args.prompt) * (args.max_new_tokens + 256)))
    prompts = args.prompt
    if args.chat:   # the template of the directory's tokenizer; its control tokens parsed, no extra BOS
        from transformers import AutoTokenizer

        texts = chat_prompts(AutoTokenizer.from_pretrained(args.model_dir), args.prompt)
        prompts = [model.tokenize(t, add_special=False) for t in texts]
    res = model.generate(prompts, args.max_new_tokens, args.temperature, args.top_p, args.top_k,
                         args.seed, dense=args.dense)
    probes = model.head.probes
    model.close()
    return res, probes
