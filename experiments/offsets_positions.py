"""The estimate offsets fitted on 4,096 vs 2,048 positions (estimate.FIT_LOGITS), in-domain eval.

    python experiments/offsets_positions.py DIR    # DIR: a default `flashhead build gemma-3-270m` directory

Calibration states: 1,365 positions of each suite source (experiments/suite_data.py's cache); eval:
1,024 positions of german and code (in-domain for a default build). Prints agreement, TV, ppl ratio.
"""
import sys
from pathlib import Path

import torch



def main():
    from suite_data import load

    from flashhead import ClusterIndex, FlashHead
    from flashhead.build.calibrate import spread
    from flashhead.core.estimate import fit_offsets
    from flashhead.tools.evaluate import evaluate_hidden

    torch.set_num_threads(2)
    data = load("gemma-3-270m")
    w = data["head"]
    cal = torch.cat([data[f"{d}/cal_h"][:1365] for d in
                     ("prose", "docs", "code", "legal", "german", "russian", "spanish", "italian")])
    ix = ClusterIndex.load(Path(sys.argv[1]) / "flash_head_assets")
    for n in (4096, 2048):
        ix.offsets = torch.zeros(ix.assignments.numel())
        ix.offsets = fit_offsets(FlashHead(w, ix), w, cal[spread(cal.shape[0], n)])
        head = FlashHead(w, ix)
        for dom in ("german", "code"):
            r = evaluate_hidden(head, w, data[f"{dom}/eval_h"][:1024], data[f"{dom}/eval_y"][:1024],
                                [head.probes], chunk=256)[0]
            print(n, dom, f"agree {r['top1_agreement']:.4f} TV {r['tv_distance']:.4f} "
                  f"ppl {r['ppl_flashhead'] / r['ppl_dense']:.3f}", flush=True)


if __name__ == "__main__":
    main()
