"""`flashhead bench`: dense head vs FlashHead, head-level and decode, side by side in one run."""
from __future__ import annotations

import json

from . import int_list

HELP = "time the dense head vs FlashHead (head step, decode tokens/s, build)"
EPILOG = """examples:
  flashhead bench models/smollm2-flashhead --batch 1,4,16,64 --json
  flashhead bench models/gemma-3-270m-flashhead --plot bench.png
  flashhead bench models/smollm2-flashhead --smoke     (tiny sizes: checks that it runs)
  flashhead bench --random-head 128256x2048 --device cuda --dtype bfloat16   (Llama-3.2-1B-shaped head)
  flashhead bench models/gemma-3-270m-flashhead --backend llamacpp --batch 1,4 --json   (llama.cpp decode)
  flashhead bench models/gemma-3-270m-flashhead --backend llamacpp --exact --new-tokens 128   (+ verified decoding)
"""


def add_arguments(p):
    p.add_argument("model_dir", nargs="?", help="a FlashHead model directory")
    p.add_argument("--random-head", default=None, metavar="VxD",
                   help="instead of a model: head-level timing of a random V x D head (e.g. 128256x2048)")
    p.add_argument("--batch", type=int_list, default=None,
                   help="batch sizes (default 1,4,16,64; llamacpp: sequences decoded together, default 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--context-probes", type=int, default=None,
                   help="of the probes, the most that go to each sequence's own clusters in decode "
                        "(default: the model's; 0: off)")
    p.add_argument("--probes", type=int_list, default=None,
                   help="probe count (default: the model's); llamacpp: a list, e.g. 512,1312")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per head measurement (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=32, help="decode: new tokens per run (default %(default)s)")
    p.add_argument("--decode-repeats", type=int, default=3, help="decode: runs per side (default %(default)s)")
    p.add_argument("--no-decode", action="store_true", help="skip the decode benchmark")
    p.add_argument("--no-build", action="store_true", help="leave out the build record (time, peak memory)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs (numbers meaningless)")
    p.add_argument("--backend", choices=["transformers", "llamacpp"], default="transformers",
                   help="llamacpp: llama.cpp's own dense decode vs llama.cpp's body + FlashHead, on the GGUF")
    p.add_argument("--gguf", default=None, help="llamacpp: the GGUF file (default: the one the directory "
                   "was built from)")
    p.add_argument("--in-place", action="store_true", help="llamacpp: read the head's rows in the file's "
                   "order (no cluster-ordered copy; docs/LLAMACPP.md)")
    p.add_argument("--exact", action="store_true", help="decode: verified decoding too (output checked "
                   "equal to dense; acceptance, K, the check's cost)")
    p.add_argument("--audit", type=int, default=0, metavar="N", help="decode: the fast mode with the live "
                   "audit (the dense head on every N-th token) too: its cost and agreement")
    p.add_argument("--prompt", default=None, help="decode: the prompt (default: an English sentence, "
                   "flashhead.tools.bench.PROMPT)")
    p.add_argument("--domain", default=None, help="decode: the prompt from the start of a suite domain's "
                   "or language's eval text (corpus.py: prose, docs, code, legal, german, russian, polish, "
                   "czech, bulgarian, chinese)")
    p.add_argument("--decode-batch", type=int_list, default=None,
                   help="transformers: sequences decoded together (default 1)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: torch's, at most the cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", default=None, help="write a PNG of head time vs batch")


def run(args):
    from ..backends import choose
    from ..tools.bench import bench, bench_random, format_decode, plot
    from ..core.config import FlashHeadError

    if args.smoke:
        args.batch, args.repeats, args.new_tokens, args.decode_repeats = [1, 2], 2, 2, 1
        args.no_build = True
    if (args.model_dir is None) == (args.random_head is None):
        raise FlashHeadError("give either a FlashHead model directory or --random-head VxD")
    backend = "transformers" if args.random_head else choose(args.backend)
    if args.audit < 0:
        raise FlashHeadError("need --audit N >= 1 (or leave it out)")
    if args.prompt is not None and args.domain is not None:
        raise FlashHeadError("give --prompt or --domain, not both")
    prompt = args.prompt
    if args.domain is not None:
        from ..tools.bench import domain_prompt

        prompt = domain_prompt(args.domain)
    if args.probes is not None:
        if len(args.probes) != 1:
            raise FlashHeadError("--probes takes one count")
        args.probes = args.probes[0]
    if args.batch is None:
        args.batch = [1] if backend == "llamacpp" else [1, 4, 16, 64]
    if args.random_head:
        try:
            v, d = (int(x) for x in args.random_head.lower().split("x"))
        except ValueError:
            raise FlashHeadError(f"--random-head expects VxD, e.g. 128256x2048, got {args.random_head!r}") from None
        result = bench_random(v, d, args.batch, args.device, args.dtype, args.probes, args.repeats)
    elif backend == "llamacpp":
        result = bench(args.model_dir, [1], args.device, args.dtype, args.probes, args.new_tokens, 1,
                       args.decode_repeats, backend="llamacpp", gguf=args.gguf, exact=args.exact,
                       decode_batches=args.batch, arrange=not args.in_place, threads=args.threads,
                       prompt=prompt, audit=args.audit, context_probes=args.context_probes)
    else:
        result = bench(args.model_dir, args.batch, args.device, args.dtype, args.probes, args.new_tokens,
                       args.repeats, args.decode_repeats, build=not args.no_build, decode=not args.no_decode,
                       exact=args.exact, decode_batches=args.decode_batch or ([1, 2] if args.smoke else [1]),
                       threads=args.threads, prompt=prompt, audit=args.audit, context_probes=args.context_probes)
    if "decode" in result:
        result["prompt_domain"] = args.domain
    if args.plot and "head" in result:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result))
        return
    m = result["machine"]
    if backend == "llamacpp":
        mem = result["memory"]
        print(f"{result['model_dir']} in llama.cpp (llama-cpp-python {result['llama_cpp_python']}, "
              f"{m['threads']} threads, {m.get('cpu', '')}): head {result['vocab']}x{result['hidden']} "
              f"{result['head_form']}, probes {result['probes']} of {result['clusters']} clusters")
        print(f"memory: GGUF {mem['gguf_bytes'] / 2**20:.0f} MiB (mapped by llama.cpp), FlashHead adds "
              f"{mem['flashhead_extra_bytes'] / 2**20:.1f} MiB")
        print(format_decode(result))
        return
    print(f"{result['model']}: head {result['vocab']}x{result['hidden']} {result['dtype']} on {result['device']}, "
          f"{result['clusters']} clusters x {result['cluster_size']}, probes {result['probes']}")
    print(f"machine: {m.get('cpu', '')}, {m['threads']} threads, torch {m['torch']}, "
          f"copy bandwidth {m['copy_bandwidth_gb_s']} GB/s")
    cols = ["batch", "dense_us", "flashhead_us", "speedup", "greedy_speedup", "dense_gb_s", "flashhead_gb_s",
            "dense_floor_us", "flashhead_floor_us"]
    print("  ".join(f"{c:>18}" for c in cols))
    for r in result["head"]:
        print("  ".join(f"{r[c]:>18.4g}" for c in cols))
    if "decode" in result:
        print(f"decode, transformers ({result['prompt_tokens']} prompt tokens, greedy):")
        print(format_decode(result))
    if result.get("build", {}).get("seconds"):   # directories built before the record have none
        print(f"build: {result['build']['seconds']['total']:.1f} s")
