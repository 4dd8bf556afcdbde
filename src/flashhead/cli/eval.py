"""`flashhead eval`: FlashHead vs the dense head on real text, per probe count."""
from __future__ import annotations

import json

from . import int_list

HELP = "measure fidelity to the dense head on real text (agreement, TV, perplexity, bytes)"
EPILOG = """examples:
  flashhead eval models/smollm2-flashhead --probes 16,64,256 --json
  flashhead eval models/gemma-3-270m-flashhead --probes 64,256,1024 --plot pareto.png
  flashhead eval models/gemma-3-270m-flashhead --text my_notes.txt --target-agreement 0.995 --write-default
"""


def add_arguments(p):
    p.add_argument("model_dir", help="a FlashHead model directory")
    p.add_argument("--text", action="append", default=[], help="also evaluate on this text file (repeatable)")
    p.add_argument("--no-corpus", action="store_true", help="only the --text files, not the built-in corpus")
    p.add_argument("--probes", type=int_list, default=None, help="probe counts, e.g. 64,256,1024 (default: the model's)")
    p.add_argument("--max-positions", type=int, default=4096, help="teacher-forced positions (default %(default)s)")
    p.add_argument("--prompts", type=int, default=8, help="free-running generations compared (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per generation (default %(default)s)")
    p.add_argument("--target-agreement", type=float, default=None, help="find the smallest probe count reaching this agreement")
    p.add_argument("--write-default", action="store_true", help="with --target-agreement: save it as the model's default probes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", default=None, help="write a PNG of agreement and TV vs bytes read")


def run(args):
    from .. import corpus
    from ..config import FlashHeadError
    from ..evaluate import evaluate, plot, set_default_probes
    from ..integrations import hf

    if args.write_default and args.target_agreement is None:
        raise FlashHeadError("--write-default needs --target-agreement")
    if args.target_agreement is not None and not 0 < args.target_agreement <= 1:
        raise FlashHeadError("--target-agreement must lie in (0, 1]")
    if args.max_positions < 1 or args.prompts < 0 or args.new_tokens < 1:
        raise FlashHeadError("need --max-positions >= 1, --prompts >= 0, --new-tokens >= 1")
    texts = corpus.read_files(args.text)
    if not args.no_corpus:
        texts += corpus.load("eval")
    model, tok = hf.load(args.model_dir)
    result = evaluate(model, tok, texts, args.probes, args.max_positions, args.prompts, args.new_tokens,
                      args.target_agreement)
    if args.plot:
        plot(result, args.plot)
    if args.write_default:
        set_default_probes(args.model_dir, result["smallest_probes"])
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']}: {result['positions']} positions, {result['clusters']} clusters x "
          f"{result['cluster_size']}, stage 1 {result['quantization']}, {result['dtype']}")
    cols = ["probes", "top1_agreement", "containment_top5", "tv_distance", "ppl_dense", "ppl_flashhead",
            "generation_match", "bytes_fraction"]
    print("  ".join(f"{c:>16}" for c in cols))
    for r in result["results"]:
        print("  ".join(f"{r.get(c, float('nan')):>16.4g}" for c in cols))
    if args.target_agreement is not None:
        note = " (written as default)" if args.write_default else ""
        print(f"smallest probes reaching {args.target_agreement}: {result['smallest_probes']}{note}")
