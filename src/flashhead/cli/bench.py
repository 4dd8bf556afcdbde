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
"""


def add_arguments(p):
    p.add_argument("model_dir", nargs="?", help="a FlashHead model directory")
    p.add_argument("--random-head", default=None, metavar="VxD",
                   help="instead of a model: head-level timing of a random V x D head (e.g. 128256x2048)")
    p.add_argument("--batch", type=int_list, default=None,
                   help="batch sizes (default 1,4,16,64; llamacpp: sequences decoded together, default 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", default=None, help="write a PNG of head time vs batch")


def run(args):
    from ..bench import bench, bench_random, plot
    from ..config import FlashHeadError

    if args.smoke:
        args.batch, args.repeats, args.new_tokens, args.decode_repeats = [1, 2], 2, 2, 1
        args.no_build = True
    if (args.model_dir is None) == (args.random_head is None):
        raise FlashHeadError("give either a FlashHead model directory or --random-head VxD")
    if args.backend != "llamacpp" and args.probes is not None:
        if len(args.probes) != 1:
            raise FlashHeadError("--probes takes one count here (a list with --backend llamacpp)")
        args.probes = args.probes[0]
    if args.batch is None:
        args.batch = [1] if args.backend == "llamacpp" else [1, 4, 16, 64]
    if args.backend == "llamacpp":
        return _llamacpp(args)
    if args.random_head:
        try:
            v, d = (int(x) for x in args.random_head.lower().split("x"))
        except ValueError:
            raise FlashHeadError(f"--random-head expects VxD, e.g. 128256x2048, got {args.random_head!r}") from None
        result = bench_random(v, d, args.batch, args.device, args.dtype, args.probes, args.repeats)
    else:
        result = bench(args.model_dir, args.batch, args.device, args.dtype, args.probes, args.new_tokens,
                       args.repeats, args.decode_repeats, build=not args.no_build, decode=not args.no_decode)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        print(json.dumps(result))
        return
    m = result["machine"]
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
        d = result["decode"]
        print(f"decode ({d['prompt_tokens']} prompt tokens, {d['new_tokens']} new, greedy): dense "
              f"{d['dense_tok_s']:.1f} tok/s, FlashHead {d['flashhead_tok_s']:.1f} tok/s, x{d['speedup']:.2f}")
    if result.get("build", {}).get("seconds"):   # directories built before the record have none
        print(f"build: {result['build']['seconds']['total']:.1f} s")


def _llamacpp(args):
    from ..bench_llamacpp import bench_llamacpp, format_table
    from ..config import FlashHeadError
    from ..sources import gguf_of

    if args.model_dir is None:
        raise FlashHeadError("--backend llamacpp needs a FlashHead model directory")
    result = bench_llamacpp(args.model_dir, gguf_of(args.model_dir, args.gguf), args.batch,
                            args.new_tokens, args.decode_repeats, args.probes, arrange=not args.in_place)
    if args.json:
        print(json.dumps(result))
        return
    mem = result["memory"]
    print(f"{result['model_dir']} in llama.cpp (llama-cpp-python {result['llama_cpp_python']}, "
          f"{result['machine']['threads']} threads): head {result['vocab']}x{result['hidden']} "
          f"{result['head_form']}, probes {result['probes']} of {result['clusters']} clusters")
    print(f"memory: GGUF {mem['gguf_bytes'] / 2**20:.0f} MiB (mapped by llama.cpp), FlashHead adds "
          f"{mem['flashhead_extra_bytes'] / 2**20:.1f} MiB")
    print(format_table(result))
