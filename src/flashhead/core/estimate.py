"""The full-vocabulary estimate: the logit FlashHead gives a token it did not score exactly.

An unprobed token v of cluster k gets   s_k + b_v,   kept strictly below the best exact logit
(so argmax(logits) is still the greedy token), where
    s_k  the cluster's stage-1 score: the usage-weighted mean logit of its members (calibrate.py)
    b_v  a per-token offset, fitted once at build time by moment matching on calibration hidden
         states: over the positions where v is not probed, the estimate gives v on average the
         probability the dense head gives it,
             b_v = log((sum_n p_dense(v | n) + a) / (sum_n q(v | n) + a))     (n: v unprobed)
         with q = softmax of FlashHead's logits before the offsets and a = PSEUDO_MASS * N, which
         pulls tokens that carried little mass towards b = 0.
One offset per token (V x 4 bytes, read only by the full-logits path). Measured on held-out text
(docs/FIDELITY.md): the perplexity gap shrinks by a third to a half and the TV distance drops too.
"""
from __future__ import annotations

import torch

# Pseudo-mass per position. Measured (SmolLM2, P = 288, 8,192 held-out positions; ppl ratio / TV):
# 8e-9 1.084 / 0.0259, 8e-8 1.094 / 0.0239, 8e-7 1.117 / 0.0247, 8e-6 1.136 / 0.0262; none 1.140 / 0.0264.
PSEUDO_MASS = 8e-8
OFFSET_LIMIT = 10.0          # nats: |b_v| is clamped (a token's mass ratio of e^10 is already extreme)
# Positions the fit reads. 4,096 measured alike to 12,288 (ppl ratio 1.095 vs 1.094) at a third
# of the time (Gemma-3-270M: one pass over 4,096 positions reads 4,096 x 262,144 dense logits).
FIT_POSITIONS = 4096
# ... and at most this many dense logits (positions x vocabulary): SmolLM2 reads 4,096 positions,
# Gemma-3-270M 2,048. Measured on a Gemma default build (experiments/offsets_positions.py; in-domain
# eval, 1,024 positions; TV / ppl ratio): 4,096 positions german 0.0059 / 1.072, code 0.0032 /
# 1.007; 2,048 german 0.0059 / 1.079, code 0.0032 / 1.008, in 23 s of the build instead of 47 (the
# build stays under 5 minutes with the calibration's kinds of start, hidden.sampled).
FIT_LOGITS = 2 ** 29


def unprobed_logits(scores: torch.Tensor, best: torch.Tensor, assignments: torch.Tensor,
                    offsets: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """scores [N, K] fp32, best [N, 1] (the best exact logit), assignments [V], offsets [V]
    -> [N, V] fp32: every token's estimate, strictly below `best`."""
    out = torch.index_select(scores, 1, assignments, out=out)
    out.add_(offsets)
    return torch.minimum(out, torch.nextafter(best, torch.full_like(best, float("-inf"))), out=out)


@torch.no_grad()
def fit_offsets(head, weight: torch.Tensor, h: torch.Tensor, chunk: int = 256,
                progress: bool = False) -> torch.Tensor:
    """Offsets [V] fp32 for `head` (its clusters, stage 1 and probes) from hidden states h [N, d]:
    one moment-matching step from the head's current offsets. (More steps measured: the second
    lowers perplexity by another ~1% and raises the TV distance by 11%; one is kept.)"""
    from tqdm.auto import tqdm

    v = head.vocab
    w = weight.float()
    num = torch.zeros(v, dtype=torch.float64)
    den = torch.zeros(v, dtype=torch.float64)
    for s in tqdm(range(0, h.shape[0], chunk), desc="estimate offsets", unit="chunk", disable=not progress):
        x = h[s:s + chunk]
        dense = x.float() @ w.T                                                 # [n, V]
        # the step's probed set (stage 1 as its kernel runs it); the probed tokens' exact logits
        # are the dense ones (the same products), so no second stage-2 pass over the batch's union
        # (Gemma-3-270M, 4,096 positions: 14 of a build's 314 s)
        scores = head.scores(x.to(weight.dtype))
        _, tok = head.step.probed(scores)
        tok, z = head.step.with_exact(x, tok, dense.gather(1, tok))
        q = head.fill_logits(x, scores, tok, z)                                  # its logits [n, V]
        probed = torch.zeros_like(q, dtype=torch.bool).scatter_(1, tok, True)
        num += torch.softmax(dense, 1).masked_fill_(probed, 0).sum(0).double().cpu()
        den += torch.softmax(q, 1).masked_fill_(probed, 0).sum(0).double().cpu()
    a = PSEUDO_MASS * h.shape[0]
    step = torch.log((num + a) / (den + a)).float()
    return (head.offsets.float().cpu() + step).clamp(-OFFSET_LIMIT, OFFSET_LIMIT)
