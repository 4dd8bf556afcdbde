"""`flashhead eval`: fidelity of FlashHead against the model's own dense head, on real text.

    hidden states once:   real text -> the model's body -> H [N, d] (the lm_head input), next tokens [N]
    per probe count P:    teacher-forced metrics on H (dense logits computed chunk by chunk),
                          plus free-running greedy generations compared token by token.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from . import metrics
from .config import FlashHeadError
from .head import FlashHead
from .hidden import teacher_forced


def evaluate_hidden(head: FlashHead, weight: torch.Tensor, H: torch.Tensor, targets: torch.Tensor,
                    probes: list[int], chunk: int = 64) -> list[dict]:
    """Teacher-forced metrics per probe count from precomputed hidden states H [N, d] and next
    tokens [N] (hidden.teacher_forced): a sweep over probes reuses one forward pass of the model."""
    sums = {p: dict.fromkeys(["agree", "contain1", "contain5", "tv1", "tv07", "nll"], 0.0) for p in probes}
    dense_nll = 0.0
    w = weight.float()
    with head.flashhead_only():              # measure FlashHead itself at every chunk size
        for s in range(0, H.shape[0], chunk):
            h, t = H[s:s + chunk], targets[s:s + chunk]
            dense = h @ w.T                                               # [n, V]
            dense_nll += float(metrics.nll(dense, t).sum())
            for p in probes:
                head.probes = p
                scores, tok, z = head.probe(h.to(weight.dtype))
                greedy = tok.gather(1, z.argmax(1, keepdim=True)).squeeze(1)
                logits = head.fill_logits(scores, tok, z)       # = head(h), one step not two
                acc = sums[p]
                acc["agree"] += float(metrics.top1_agreement(greedy, dense).sum())
                acc["contain1"] += float(metrics.containment(tok, dense, 1).sum())
                acc["contain5"] += float(metrics.containment(tok, dense, 5).sum())
                acc["tv1"] += float(metrics.tv_distance(logits, dense, 1.0).sum())
                acc["tv07"] += float(metrics.tv_distance(logits, dense, 0.7).sum())
                acc["nll"] += float(metrics.nll(logits, t).sum())
    n = H.shape[0]
    rows = []
    for p in probes:
        acc = sums[p]
        rows.append({"probes": p, "top1_agreement": acc["agree"] / n, "containment": acc["contain1"] / n,
                     "containment_top5": acc["contain5"] / n, "tv_distance": acc["tv1"] / n,
                     "tv_distance_t0.7": acc["tv07"] / n, "ppl_dense": math.exp(dense_nll / n),
                     "ppl_flashhead": math.exp(acc["nll"] / n),
                     **metrics.cost(head.vocab, head.hidden, head.num_clusters, head.cluster_size, p,
                                    head.config.quantization, weight.dtype),
                     # the same step of the model served in bf16 (as on a GPU): the ratio to quote
                     "bytes_fraction_bf16": metrics.cost(head.vocab, head.hidden, head.num_clusters,
                                                         head.cluster_size, p, head.config.quantization,
                                                         torch.bfloat16)["bytes_fraction"]})
    return rows


def _generation_match(model, tokenizer, prompts: list[str], probes: list[int], new_tokens: int) -> dict:
    from .generation import generate

    lm = model.lm_head
    lm.use_flashhead = False
    dense = generate(model, tokenizer, prompts, max_new_tokens=new_tokens)["token_ids"]
    lm.use_flashhead = True
    out = {}
    for p in probes:                         # FlashHead at every probe count, not the dense rule
        with lm.flashhead.flashhead_only(p):
            flash = generate(model, tokenizer, prompts, max_new_tokens=new_tokens)["token_ids"]
        out[p] = sum(metrics.common_prefix(a, b) for a, b in zip(dense, flash)) / len(prompts)
    return out


def dense_top1_rank(head: FlashHead, H: torch.Tensor, weight: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """[N]: rank (0 = first) of the cluster holding the dense argmax among the stage-1 scores.

    The dense top-1 token is probed, and FlashHead's greedy token equals it, when this rank is
    below P: one pass gives the agreement of every probe count. Clusters tied with it count as
    ranked before it (bf16 scores of the CPU int8 kernel tie often)."""
    w = weight.float()
    ranks = []
    for s in range(0, H.shape[0], chunk):
        h = H[s:s + chunk]
        top1 = (h.float() @ w.T).argmax(1)                                    # [n]
        scores = head.scores(h.to(weight.dtype))                              # [n, K]
        own = scores.gather(1, head.assignments[top1].unsqueeze(1))           # [n, 1]
        ranks.append((scores >= own).sum(1) - 1)
    return torch.cat(ranks)


def smallest_probes(ranks: torch.Tensor, target: float) -> int:
    """Smallest P whose greedy agreement reaches `target`, from dense_top1_rank's ranks [N]."""
    ranks = ranks.sort().values
    need = min(max(math.ceil(target * ranks.numel()), 1), ranks.numel())
    return int(ranks[need - 1]) + 1


def evaluate(model, tokenizer, texts: list[str], probes: list[int] | None = None, max_positions: int = 4096,
             prompts: int = 8, new_tokens: int = 32, target_agreement: float | None = None) -> dict:
    """Fidelity of the model's FlashHead vs its dense head. `model` has a FlashHeadLMHead (hf.load)."""
    lm = model.lm_head
    head = lm.flashhead
    probes = sorted(set(probes or [head.probes]))
    for p in probes:
        if not 1 <= p <= head.num_clusters:
            raise FlashHeadError(f"probes must lie in [1, {head.num_clusters}], got {p}")
    H, targets = teacher_forced(model, tokenizer, texts, max_positions)
    rows = evaluate_hidden(head, lm.weight.detach(), H, targets, probes)
    if prompts > 0:
        starts = [" ".join(t.split()[:8]) for t in texts[:prompts]]
        match = _generation_match(model, tokenizer, starts, probes, new_tokens)
        for r in rows:
            r["generation_match"] = match[r["probes"]]
            r["generation_tokens"] = new_tokens
    out = {"model": getattr(model.config, "_name_or_path", ""), "vocab": head.vocab, "hidden": head.hidden,
           "clusters": head.num_clusters, "cluster_size": head.cluster_size,
           "quantization": head.config.quantization, "dtype": str(lm.weight.dtype).replace("torch.", ""),
           "positions": int(H.shape[0]), "prompts": prompts, "results": rows}
    if target_agreement is not None:
        out["target_agreement"] = target_agreement
        out["smallest_probes"] = smallest_probes(dense_top1_rank(head, H, lm.weight.detach()), target_agreement)
    return out


def set_default_probes(model_dir, probes: int) -> None:
    """Write `probes` as the default of a FlashHead model directory (flashhead.json)."""
    from .build import CACHE_KEY, read_config
    from .index import ClusterIndex

    assets = Path(model_dir) / read_config(Path(model_dir))[CACHE_KEY]
    index = ClusterIndex.load(assets)
    index.config.probes = probes
    index.save(model_dir)


def plot(result: dict, path) -> None:
    """PNG: top-1 agreement and TV distance against bytes_fraction (bf16), one point per probe
    count, with the targets of docs/FIDELITY.md dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["results"], key=lambda r: r["probes"])
    x = [r["bytes_fraction_bf16"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label, target in ((axes[0], "top1_agreement", "greedy top-1 agreement", 0.995),
                                   (axes[1], "tv_distance", "TV distance to dense (T=1)", 0.03)):
        ax.plot(x, [r[key] for r in rows], "o-")
        for xi, r in zip(x, rows):
            ax.annotate(f"P={r['probes']}", (xi, r[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axhline(target, color="gray", ls=":")
        ax.axvline(0.125, color="gray", ls=":")
        ax.set_xlabel("bytes read per step / dense head (bf16)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    name = Path(str(result.get("model", ""))).name
    fig.suptitle(f"{name}: {result['clusters']} clusters x {result['cluster_size']}, "
                 f"{result['positions']} positions of held-out text")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
