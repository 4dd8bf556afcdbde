"""`flashhead build`: cluster a model's head and write a FlashHead model directory."""
from __future__ import annotations

import json

HELP = "cluster a model's output head and write a FlashHead model directory"
EPILOG = """examples:
  flashhead build gemma-3-270m -o models/gemma-3-270m-flashhead
  flashhead build path/to/model.gguf -o models/my-flashhead --calibrate-on my_prompts.txt
  flashhead build path/to/hf-model-dir -o models/my-flashhead --calibrate-on self --probes 256 --json

Calibration: the model runs over real text and the clusters are fitted to where its hidden states
point. --calibrate-on takes `suite` (default: the calibration documents of every domain of the
suite and the model's own samples; the evaluation documents are `flashhead eval`'s), domain names
(`prose`, `code`, ...; `fortunes` is `prose`; also `translations`, the installed packages' message
catalogs in ~120 languages, and `polish`, `czech`, `bulgarian`, `chinese`: not in `suite`, see
docs/FIDELITY.md), `self` (the model's own samples, started from
every kind of token in its vocabulary: no corpus needed), or text files like your workload (one
text per blank-line separated paragraph).
Default probes: the smallest count reaching --target-agreement on the last quarter of that text.
"""


def add_arguments(p):
    from ..build import CALIBRATION_POSITIONS
    from ..build.fit import TARGET_AGREEMENT
    from ..core.config import FlashHeadConfig, QUANTIZATIONS
    from ..build.sources import ALIASES

    d = FlashHeadConfig()
    p.add_argument("source", help=f"HF model directory, .gguf file, or alias ({', '.join(ALIASES)})")
    p.add_argument("-o", "--output", required=True, help="FlashHead model directory to write")
    p.add_argument("--cluster-size", type=int, default=d.cluster_size, help="tokens per cluster (default %(default)s)")
    p.add_argument("--probes", type=int, default=None,
                   help="default clusters probed per step (default: chosen by --target-agreement)")
    p.add_argument("--target-agreement", type=float, default=TARGET_AGREEMENT,
                   help="greedy agreement with the dense head that picks the default probes, on "
                        "held-out calibration positions (default %(default)s)")
    p.add_argument("--calibrate-on", nargs="+", default=None, metavar="SOURCE",
                   help="sources: self, suite, domain names, or text files (default: see below)")
    p.add_argument("--calibration-positions", type=int, default=CALIBRATION_POSITIONS,
                   help="hidden states to calibrate on (default %(default)s)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default=d.quantization, help="stage-1 storage (default %(default)s)")
    p.add_argument("--iterations", type=int, default=d.iterations, help="k-means refinement rounds (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=None, help="device for clustering, e.g. cuda (default: cpu)")
    p.add_argument("--next-clusters", action="store_true",
                   help="also store each token's next clusters for the context-aware probes (better on text "
                        "no build saw; one body step and one dense head product per vocabulary token: on 2 "
                        "cores minutes for SmolLM2-135M, hours for Gemma-3-270M without AVX-512 BF16)")
    p.add_argument("--json", action="store_true", help="print build statistics as one JSON object")


def run(args):
    from ..build import build
    from ..core.config import FlashHeadConfig
    from ..core.layout import load_assets

    config = FlashHeadConfig(cluster_size=args.cluster_size, quantization=args.quantization,
                             iterations=args.iterations, seed=args.seed)
    calibration = calibration_arg(args.calibrate_on)
    out = build(args.source, args.output, config, progress=not args.json, device=args.device,
                calibration=calibration, positions=args.calibration_positions,
                target_agreement=args.target_agreement, probes=args.probes, next_clusters=args.next_clusters)
    index = load_assets(out)
    stats = index.build
    if args.json:
        print(json.dumps({"output": str(out), "config": index.config.to_dict(), "build": stats}))
    else:
        cal = stats["calibration"]
        print(f"wrote {out}: {stats['clusters']} clusters of {stats['cluster_size']} tokens, "
              f"probes {index.config.probes} ({cal['held_out_agreement']:.2%} greedy agreement on "
              f"{cal['held_out_positions']} held-out positions), {stats['seconds']['total']:.0f} s")


def calibration_arg(calibrate_on):
    """--calibrate-on's words -> build's calibration: source names kept, the rest read as text files."""
    from ..build import DEFAULT_CALIBRATION, calibration_sources
    from ..data.corpus import DOMAINS, read_files

    if not calibrate_on:
        return DEFAULT_CALIBRATION
    names = [x for x in calibrate_on if x in ("self", "suite", "fortunes") or x in DOMAINS]
    files = [x for x in calibrate_on if x not in names]
    return calibration_sources(names + ([read_files(files)] if files else []))
