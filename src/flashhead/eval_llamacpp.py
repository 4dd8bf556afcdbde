"""`flashhead eval --backend llamacpp`: FlashHead against llama.cpp's own dense head, per suite domain.

Hidden states come from llama.cpp (the graph stopped at result_norm, integrations/llamacpp.py); the
dense reference is llama.cpp's product with the GGUF's Q8_0 head (q8rows.py: the same integer block
dots llama.cpp computes), FlashHead's step the native one llama.cpp decoding uses. The chat domain
needs the transformers model to answer its questions (chat.py): not measured here.
"""
from __future__ import annotations

import torch

from . import corpus
from .config import FlashHeadError
from .evaluate import evaluate_hidden, worst_domains
from .integrations.llamacpp import LlamaCpp


def hidden_and_targets(model: LlamaCpp, texts: list[str], max_positions: int):
    """Teacher-forced hidden states [N, d] and next tokens [N] from llama.cpp, text by text."""
    hs, ts, n = [], [], 0
    for text in texts:
        ids = model.tokenize(text)[: model.n_ctx]
        if len(ids) < 2:
            continue
        h = model.hidden_states(ids)[:-1]
        hs.append(h[: max_positions - n])
        ts.append(torch.tensor(ids[1:len(hs[-1]) + 1]))
        n += hs[-1].shape[0]
        if n >= max_positions:
            break
    if not hs:
        raise FlashHeadError("no text with two or more tokens")
    return torch.cat(hs), torch.cat(ts)


def evaluate_llamacpp(model: LlamaCpp, domains: list[str] | None = None, probes: list[int] | None = None,
                      max_positions: int = 3072, progress: bool = False) -> dict:
    head = model.head
    probes = sorted(set(probes or [head.probes]))
    seen = set((head.build.get("calibration") or {}).get("sources") or [])
    out = {"backend": "llamacpp", "gguf": str(model.path), "vocab": model.vocab, "hidden": model.hidden,
           "clusters": head.num_clusters, "cluster_size": head.cluster_size,
           "skipped": [] if domains else ["chat (answered by the transformers model: flashhead eval without "
                                          "--backend)"], "domains": {}}
    for d in domains or [d for d in corpus.SUITE if d != "chat"]:
        if d == "chat":
            raise FlashHeadError("the chat domain is measured with the transformers backend only")
        if progress:
            print(f"eval (llama.cpp): {d}", flush=True)
        H, targets = hidden_and_targets(model, corpus.load("eval", d), max_positions)
        rows = evaluate_hidden(head, head.weight, H, targets, probes)
        out["domains"][d] = {"positions": int(H.shape[0]), "in_domain": d in seen, "results": rows}
    out["worst"] = worst_domains(out["domains"])
    return out
