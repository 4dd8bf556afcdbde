"""`flashhead build`: cluster a model's head and write a FlashHead model directory."""
from __future__ import annotations

import json

HELP = "cluster a model's output head and write a FlashHead model directory"
EPILOG = """examples:
  flashhead build gemma-3-270m -o models/gemma-3-270m-flashhead
  flashhead build path/to/model.gguf -o models/my-flashhead --cluster-size 16 --probes 256
  flashhead build path/to/hf-model-dir -o models/my-flashhead --json
"""


def add_arguments(p):
    from ..config import FlashHeadConfig, QUANTIZATIONS
    from ..sources import ALIASES

    d = FlashHeadConfig()
    p.add_argument("source", help=f"HF model directory, .gguf file, or alias ({', '.join(ALIASES)})")
    p.add_argument("-o", "--output", required=True, help="FlashHead model directory to write")
    p.add_argument("--cluster-size", type=int, default=d.cluster_size, help="tokens per cluster (default %(default)s)")
    p.add_argument("--probes", type=int, default=d.probes, help="default clusters probed per step (default %(default)s)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default=d.quantization, help="stage-1 storage (default %(default)s)")
    p.add_argument("--iterations", type=int, default=d.iterations, help="k-means refinement rounds (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="device for clustering, e.g. cuda (default: cpu)")
    p.add_argument("--json", action="store_true", help="print build statistics as one JSON object")


def run(args):
    from ..build import build
    from ..config import FlashHeadConfig
    from ..index import ASSETS_DIR, ClusterIndex

    config = FlashHeadConfig(cluster_size=args.cluster_size, probes=args.probes,
                             quantization=args.quantization, iterations=args.iterations, seed=args.seed)
    out = build(args.source, args.output, config, progress=not args.json, device=args.device)
    stats = ClusterIndex.load(out / ASSETS_DIR).build
    if args.json:
        print(json.dumps({"output": str(out), "config": config.to_dict(), "build": stats}))
    else:
        print(f"wrote {out}: {stats['clusters']} clusters of {stats['cluster_size']} tokens, "
              f"objective {stats['objective']:.4f}, {stats['seconds']:.1f} s")
