"""`flashhead generate`: run a FlashHead model directory (transformers, or llama.cpp on the GGUF)."""
from __future__ import annotations

import json
import sys

HELP = "generate text with a FlashHead model directory (transformers, or llama.cpp on the GGUF)"
EPILOG = """examples:
  flashhead generate models/gemma-3-270m-flashhead --prompt "The capital of France is" --max-new-tokens 40
  flashhead generate models/gemma-3-270m-flashhead --prompt "..." --temperature 0.8 --top-p 0.95 --seed 1
  flashhead generate models/gemma-3-270m-flashhead --prompt "..." --exact      # verified: the dense head's tokens
  flashhead generate models/gemma-3-270m-flashhead --prompt "..." --dense      # same model, dense head
  flashhead generate models/gemma-3-270m-flashhead --prompt "..." --audit 16   # + FlashHead vs dense, 1 in 16
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
    p.add_argument("--context-probes", type=int, default=None,
                   help="of the probes, the most that go to the clusters of each sequence's own tokens "
                        "(default: the model's; 0: off)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", action="store_true", help="verified decoding: FlashHead proposes, the dense "
                      "head checks several positions at once; output = the dense head's (greedy), exact "
                      "in distribution (sampling), dense logprobs")
    mode.add_argument("--dense", action="store_true", help="use the dense head instead (for comparison)")
    p.add_argument("--audit", type=int, default=0, metavar="N", help="fast mode: also run the dense head on "
                   "every N-th token and report how often FlashHead's top-1 agreed (e.g. 64)")
    p.add_argument("--logprobs", action="store_true", help="each token's log-probability (with --json)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--backend", choices=["auto", "transformers", "llamacpp"], default="transformers",
                   help="where the model's body runs (default %(default)s); llamacpp runs the GGUF file; "
                        "auto: llamacpp where llama-cpp-python is installed")
    p.add_argument("--gguf", default=None, help="llamacpp: the GGUF file (default: the one the directory "
                   "was built from)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    from ..core.config import FlashHeadError
    from ..core.sampling import check
    from ..tools.model import load

    check(args.temperature, args.top_p, args.top_k)
    if args.max_new_tokens < 1:
        raise FlashHeadError("need --max-new-tokens >= 1")
    if args.audit < 0 or (args.audit and (args.exact or args.dense)):
        raise FlashHeadError("--audit N (N >= 1) audits the fast mode: leave out --exact and --dense")
    if any(p == "" for p in args.prompt):
        raise FlashHeadError("a prompt is empty: give the text to continue (--prompt TEXT)")
    mode = "dense" if args.dense else "exact" if args.exact else "fast"
    n = len(args.prompt)
    model = load(args.model_dir, args.backend, gguf=args.gguf, probes=args.probes, dense=args.dense,
                 context_probes=args.context_probes,
                 max_sequences=n, n_ctx=args.max_new_tokens + 512)
    try:
        res = model.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_p=args.top_p, top_k=args.top_k, seed=args.seed, mode=mode,
                             logprobs=args.logprobs, chat=args.chat, audit=args.audit)
    finally:
        model.close()
    probes = None if model.head is None else model.head.probes
    if args.json:
        print(json.dumps({"head": "dense" if args.dense else "flashhead", **res}))
        return
    for prompt, text in zip(args.prompt, res["texts"]):
        print(prompt + text)
    head = "dense" if args.dense else f"flashhead (probes={probes}{', exact' if args.exact else ''})"
    extra = ""
    if args.exact:
        e = res["exact"]
        extra = f", acceptance {e['acceptance']:.3f}, mean K {e['mean_draft']:.1f}"
    if "audit" in res:
        a = res["audit"]
        extra = f", audit: top-1 = dense on {a['agreed']}/{a['checked']} checked tokens"
    print(f"[{res['backend']}, {head}: {sum(res['new_tokens'])} tokens in {res['seconds']:.2f} s, "
          f"{res['tokens_per_second']:.1f} tokens/s{extra}]", file=sys.stderr)
