"""`flashhead upgrade`: a published FlashHead checkpoint directory made a full FlashHead directory."""
from __future__ import annotations

import json

HELP = "add flashhead.json, the fingerprint and the estimate offsets to a published FlashHead directory"
EPILOG = """examples:
  flashhead upgrade path/to/published-flashhead-model
  flashhead upgrade path/to/published-flashhead-model --calibrate-on self --json
  flashhead upgrade models/gemma-3-270m-flashhead --next-clusters

A published checkpoint (config.json with flash_head_cache_dir, clustering_cache.safetensors with
centroids and cluster_assignments only, no flashhead.json) loads as it is, with a logged warning
that no fingerprint can be checked and with estimates from the clusters' mean rows. The upgrade
keeps its clusters, probes and both tensors, and adds in place (each file replaced atomically):
the head's fingerprint, the always-exact end tokens, the estimate's per-token offsets fitted on
calibration text, and a build record with the held-out greedy agreement.

--next-clusters adds to any FlashHead directory (built or upgraded) each token's next clusters:
the clusters of what the model writes after that token alone, which join a sequence's context at
the step after it reads the token (docs/FIDELITY.md, "Next clusters").
"""


def add_arguments(p):
    from ..build import UPGRADE_POSITIONS

    p.add_argument("model_dir", help="a FlashHead model directory in the published layout")
    p.add_argument("--calibrate-on", nargs="+", default=None, metavar="SOURCE",
                   help="sources: self, suite, domain names, or text files (default: the suite)")
    p.add_argument("--calibration-positions", type=int, default=UPGRADE_POSITIONS,
                   help="hidden states: 3/4 fit the offsets, 1/4 measure the agreement (default %(default)s)")
    p.add_argument("--device", default=None, help="device for the model run, e.g. cuda (default: cpu)")
    p.add_argument("--next-clusters", action="store_true",
                   help="add each token's next clusters to a FlashHead directory (flashhead build --next-clusters "
                        "does the same at build time); nothing else changes")
    p.add_argument("--json", action="store_true", help="print the new flashhead.json record as one JSON object")


def run(args):
    from ..build import add_next_clusters, upgrade
    from .build import calibration_arg
    from ..core.layout import load_assets

    if args.next_clusters:
        out = add_next_clusters(args.model_dir, progress=not args.json, device=args.device)
        index = load_assets(out)
        rec = index.build["next_clusters"]
        if args.json:
            print(json.dumps({"output": str(out), "config": index.config.to_dict(), "build": index.build}))
        else:
            print(f"added {rec['per_token']} next clusters per token to {out} in {rec['seconds']:.0f} s")
        return
    out = upgrade(args.model_dir, calibration_arg(args.calibrate_on), args.calibration_positions,
                  progress=not args.json, device=args.device)
    index = load_assets(out)
    cal = index.build["calibration"]
    if args.json:
        print(json.dumps({"output": str(out), "config": index.config.to_dict(), "build": index.build}))
    else:
        print(f"upgraded {out}: {index.num_clusters} clusters (up to {index.config.cluster_size} tokens), "
              f"probes {index.config.probes}, {cal['held_out_agreement']:.2%} greedy agreement on "
              f"{cal['held_out_positions']} held-out positions")
