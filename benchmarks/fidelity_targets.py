"""Where FlashHead's perplexity gap comes from: the text's next tokens that fall outside the probes.

    python benchmarks/fidelity_data.py MODEL           # once per model: cached hidden states
    python benchmarks/fidelity_targets.py [MODEL ...]

Default build (build.fit_index on 12,288 calibration positions), 8,192 eval positions. Prints the
share of target tokens whose cluster is not probed and the share of the log-perplexity gap
(dense NLL - FlashHead NLL, summed) those positions carry (docs/FIDELITY.md, "Perplexity").
"""
from __future__ import annotations

import sys

import torch

sys.path.insert(0, "benchmarks")
EVAL = 8192


def main():
    from fidelity_lab import load
    from flashhead import FlashHead, FlashHeadConfig
    from flashhead.build import fit_index

    torch.set_num_threads(2)
    probes_of = {"smollm2-135m": 288, "gemma-3-270m": 1024}
    for model in sys.argv[1:] or list(probes_of):
        probes = probes_of[model]
        data = load(model)
        w, h, y = data["head"], data["eval_h"][:EVAL], data["eval_y"][:EVAL]
        head = FlashHead(w, fit_index(w, data["cal_h"][:12288], FlashHeadConfig(probes=probes)))
        scores = head.scores(h)
        own = scores.gather(1, head.assignments[y].unsqueeze(1))
        unprobed = (scores >= own).sum(1) - 1 >= probes                       # ties count against
        nll_flash = -torch.log_softmax(head(h), 1).gather(1, y[:, None])[:, 0]
        nll_dense = -torch.log_softmax(h @ w.T, 1).gather(1, y[:, None])[:, 0]
        gap = nll_flash - nll_dense
        print(f"{model} P={probes}: targets unprobed {float(unprobed.float().mean()):.4f}, "
              f"mean log-ppl gap {float(gap.mean()):.4f}, share carried by unprobed targets "
              f"{float(gap[unprobed].sum() / gap.sum()):.2f}")
        for bound in (1, 6):                       # targets the dense head found likely
            sel = unprobed & (nll_dense < bound)
            print(f"  unprobed targets with dense p > e^-{bound}: {int(sel.sum())} of {len(y)} positions, "
                  f"{float(gap[sel].sum() / gap.sum()):.2f} of the gap, {float(gap[sel].mean()):.1f} nats each")


if __name__ == "__main__":
    main()
