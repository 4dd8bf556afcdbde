"""`flashhead eval`: FlashHead vs the dense head on real text, per probe count."""
from __future__ import annotations

import json

from . import int_list

HELP = "measure fidelity to the dense head on real text (agreement, TV, perplexity, bytes), per domain"
EPILOG = """examples:
  flashhead eval models/gemma-3-270m-flashhead                       # the domain suite (default)
  flashhead eval models/gemma-3-270m-flashhead --suite --json --plot domains.png
  flashhead eval models/smollm2-flashhead --domain german --domain code --probes 128,256,512
  flashhead eval models/gemma-3-270m-flashhead --text my_notes.txt --target-agreement 0.995 --write-default
  flashhead eval models/gemma-3-270m-flashhead --languages --context-probes 0,192 --json
  flashhead eval models/smollm2-flashhead --backend llamacpp --quantizations q8_0,q4_k_m

Without --text, the text is the suite: the eval documents of every domain (prose, docs, code, legal,
german, russian, chat; src/flashhead/data/corpus.py), the worst domain the build never saw reported.
With --text, only those files (one text per blank-line separated paragraph). With --languages,
the languages check: running prose in 15 languages of 6 scripts that no build calibrates on
(src/flashhead/data/languages.py), texts of up to 512 tokens, once per context budget of
--context-probes (0: stage 1 alone picks the probes; E: up to E of them go to the clusters of the
text so far). Every mode reports KL divergence to the dense head as llama-perplexity does; with
--backend llamacpp --quantizations, llama.cpp's own quantizations of the same GGUF stand beside
FlashHead, measured on the same positions.
"""


def add_arguments(p):
    p.add_argument("model_dir", help="a FlashHead model directory")
    p.add_argument("--text", action="append", default=[], help="evaluate on this text file only (repeatable)")
    p.add_argument("--suite", action="store_true", help="every domain of the suite (the default without --text)")
    p.add_argument("--domain", action="append", default=[], help="one suite domain (repeatable)")
    p.add_argument("--probes", type=int_list, default=None,
                   help="probe counts, e.g. 64,256,1024 (default: the model's)")
    p.add_argument("--languages", action="store_true",
                   help="the languages check (15 languages no build calibrated on)")
    p.add_argument("--context-probes", type=int_list, default=None,
                   help="of the probes, the most that go to the text's own clusters (default: the "
                        "model's); with --languages, budgets to compare, e.g. 0,192")
    p.add_argument("--max-positions", type=int, default=3072, help="teacher-forced positions per text (default %(default)s)")
    p.add_argument("--prompts", type=int, default=4, help="free-running generations compared (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per generation (default %(default)s)")
    p.add_argument("--target-agreement", type=float, default=None, help="find the smallest probe count reaching this agreement")
    p.add_argument("--write-default", action="store_true", help="with --target-agreement: save it as the model's default probes")
    p.add_argument("--backend", choices=["transformers", "llamacpp"], default="transformers",
                   help="llamacpp: hidden states from llama.cpp, against llama.cpp's own dense head "
                        "(the suite's domains except chat)")
    p.add_argument("--gguf", default=None, help="llamacpp: the GGUF file (default: the one the directory "
                   "was built from)")
    p.add_argument("--quantizations", default=None, metavar="KINDS",
                   help="llamacpp: also llama.cpp's own quantizations of the GGUF (its quantizer), on the "
                        "same positions in the same units, e.g. q8_0,q4_k_m")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", default=None, help="write a PNG of agreement and TV vs bytes read")


COLS = ["probes", "top1_agreement", "tv_distance", "ppl_dense", "ppl_flashhead",
        "generation_match", "bytes_fraction_bf16"]


def _table(result: dict) -> None:
    print("  ".join(f"{c:>16}" for c in COLS))
    for r in result["results"]:
        print("  ".join(f"{r.get(c) if r.get(c) is not None else float('nan'):>16.4g}" for c in COLS))


def run(args):
    from ..data import corpus
    from ..core.config import FlashHeadError
    from ..tools.evaluate import evaluate, evaluate_suite, plot, plot_suite, set_default_probes
    from ..integrations import hf

    if args.write_default and args.target_agreement is None:
        raise FlashHeadError("--write-default needs --target-agreement")
    if args.target_agreement is not None and not 0 < args.target_agreement <= 1:
        raise FlashHeadError("--target-agreement must lie in (0, 1]")
    if args.max_positions < 1 or args.prompts < 0 or args.new_tokens < 1:
        raise FlashHeadError("need --max-positions >= 1, --prompts >= 0, --new-tokens >= 1")
    if args.text and (args.suite or args.domain):
        raise FlashHeadError("--text evaluates your files only: leave out --suite and --domain")
    for d in args.domain:
        if d not in corpus.SUITE:
            raise FlashHeadError(f"unknown domain {d!r}: choose from {', '.join(corpus.SUITE)}")
    if not args.text and args.target_agreement is not None:
        raise FlashHeadError("--target-agreement needs --text (the text to tune the probes on)")
    texts = corpus.read_files(args.text)
    if args.text and not texts:
        raise FlashHeadError("the --text files hold no text")
    if args.languages and (args.text or args.suite or args.domain or args.probes or args.target_agreement
                           or args.backend != "transformers" or args.plot):
        raise FlashHeadError("--languages runs the languages check alone: leave out --text, --suite, "
                             "--domain, --probes, --target-agreement, --plot and --backend")
    if args.context_probes is not None and not args.languages and len(args.context_probes) != 1:
        raise FlashHeadError("--context-probes takes one budget (several with --languages)")
    if args.quantizations is not None and args.backend != "llamacpp":
        raise FlashHeadError("--quantizations measures llama.cpp's quantizations: add --backend llamacpp")
    if args.backend == "llamacpp":
        return _llamacpp(args)
    model, tok = hf.load(args.model_dir)
    if args.languages:
        return _languages(args, model, tok)
    if args.context_probes is not None:
        model.lm_head.flashhead.context_probes = args.context_probes[0]
    if not args.text:
        result = evaluate_suite(model, tok, args.domain or None, args.probes, args.max_positions, args.prompts,
                                args.new_tokens, progress=True)
        if args.plot:
            plot_suite(result, args.plot)
        if args.json:
            print(json.dumps(result))
            return
        _print_suite(result)
        return
    result = evaluate(model, tok, texts, args.probes, args.max_positions, args.prompts, args.new_tokens,
                      args.target_agreement)
    if args.plot:
        plot(result, args.plot)
    if args.write_default:
        set_default_probes(args.model_dir, result["smallest_probes"])
    if args.json:
        print(json.dumps(result))
        return
    short = f" (the text has {result['positions']} of the {args.max_positions} positions asked)" \
        if result["positions"] < args.max_positions else ""
    print(f"{result['model']}: {result['positions']} positions{short}, {result['clusters']} clusters x "
          f"{result['cluster_size']}, stage 1 {result['quantization']}, {result['dtype']}")
    _table(result)
    if args.target_agreement is not None:
        note = " (written as default)" if args.write_default else ""
        print(f"smallest probes reaching {args.target_agreement}: {result['smallest_probes']}{note}")


def _languages(args, model, tok):
    from ..tools.evaluate import evaluate_languages

    result = evaluate_languages(model, tok, contexts=args.context_probes,
                                max_positions=min(args.max_positions, 1536), progress=True)
    if args.json:
        print(json.dumps(result))
        return
    cols = [f"E={e}" for e in result["contexts"]]
    print(f"probes {result['probes']}; per context budget E: greedy agreement / mean KLD (nats)")
    print(f"{'language':>10} {'script':>10} {'positions':>9}  " + "  ".join(f"{c:>16}" for c in cols))
    for lang, r in result["languages"].items():
        print(f"{lang:>10} {r['script']:>10} {r['positions']:>9}  " + "  ".join(
            f"{x['top1_agreement']:>9.2%} / {x['kld_mean']:<5.3f}" for x in r["results"]))
    for e, s in result["summary"].items():
        print(f"E={e}: worst {s['worst']:.2%}, mean {s['mean']:.2%}; KLD worst {s['kld_worst']:.3f}, "
              f"mean {s['kld_mean']:.3f}")


def _print_suite(result: dict) -> None:
    for d, r in result["domains"].items():
        note = " (in-domain: the build calibrated on it)" if r["in_domain"] else ""
        print(f"\n{d}{note}: {r['positions']} positions")
        _table(r)
        for x in [*r["results"], *r.get("quantizations", [])]:
            name = f"llama.cpp {x['quantization']}" if "quantization" in x else f"FlashHead P={x['probes']}"
            print(f"  {name:>20}: KLD mean {x['kld_mean']:.4f}, p99 {x['kld_p99']:.3f}, p99.9 "
                  f"{x['kld_p999']:.3f}; same top-1 {x['top1_agreement']:.2%}")
    print("\nworst domain the build never saw:", ", ".join(
        f"{k} {v['value']:.4g} ({v['domain']})" for k, v in result["worst"].items()))


def _llamacpp(args):
    from ..core.config import FlashHeadError
    from ..backends.llamacpp_quantize import parse
    from ..tools.evaluate import evaluate_backend
    from ..tools.model import load

    if args.text or args.target_agreement is not None or args.plot:
        raise FlashHeadError("--backend llamacpp evaluates the suite's domains: leave out --text, "
                             "--target-agreement and --plot")
    kinds = parse(args.quantizations) if args.quantizations is not None else None
    model = load(args.model_dir, "llamacpp", gguf=args.gguf, max_sequences=1,
                 context_probes=None if args.context_probes is None else args.context_probes[0])
    try:
        result = evaluate_backend(model, args.domain or None, args.probes, args.max_positions,
                                  progress=True, quantizations=kinds)
    finally:
        model.close()
    if args.json:
        print(json.dumps(result))
        return
    _print_suite(result)
