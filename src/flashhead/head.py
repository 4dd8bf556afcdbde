"""FlashHead: the retrieval head that replaces `logits = h @ W.T`.

One decode step for hidden states h [N, d] (any leading dims are flattened):
    stage 1   s = h @ C.T                   [N, K]   cluster scores (C: raw cluster means, so s is
                                                     exactly each cluster's mean logit)
    probe     top = topk(s, P)              [N, P]
    stage 2   z = h . W[block_ids[top]]     [N, P*cs] exact logits of the probed tokens
    greedy    block_ids[top][argmax z]      [N]      (fast path: no [N, V] tensor)
    logits    [N, V]: every token gets its cluster's estimate, the probed tokens their exact z.

The head weight W is the model's own tensor (held by reference, never copied); the module adds
centroids, block ids and the estimate tables: a few percent of W.
"""
from __future__ import annotations

import torch

from .config import FlashHeadError
from .index import ClusterIndex
from .quant import Stage1


class FlashHead(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, index: ClusterIndex, probes: int | None = None,
                 check_fingerprint: bool = True):
        super().__init__()
        from .index import check_fingerprint as _check

        if weight.dim() != 2 or weight.shape[0] != index.vocab:
            raise FlashHeadError(f"head weight of shape {list(weight.shape)} does not match assets "
                                 f"built for vocabulary {index.vocab}")
        if weight.shape[1] != index.centroids.shape[1]:
            raise FlashHeadError(f"head hidden size {weight.shape[1]} does not match assets "
                                 f"(hidden size {index.centroids.shape[1]})")
        if check_fingerprint:
            _check(index.fingerprint, weight, "FlashHead assets")
        self.weight = weight  # the model's tensor, shared (not registered: the model owns it)
        self.config = index.config
        self.vocab, self.hidden = weight.shape
        self.cluster_size = index.config.cluster_size
        self.num_clusters = index.num_clusters
        self.probes = index.config.probes if probes is None else probes
        ids, mask = index.blocks()
        # A short last cluster (V % cs != 0) repeats its first token in the empty slots: the
        # repeat gets the same exact logit, so neither argmax nor the scatter changes.
        ids = torch.where(mask, ids, ids[:, :1])
        self.register_buffer("block_ids", ids.to(weight.device), persistent=False)       # [K, cs]
        self.register_buffer("assignments", index.assignments.to(weight.device), persistent=False)
        self.stage1 = Stage1(index.centroids, index.config.quantization, weight.dtype, weight.device)

    @property
    def probes(self) -> int:
        return self._probes

    @probes.setter
    def probes(self, p: int) -> None:
        if not isinstance(p, int) or not 1 <= p <= self.num_clusters:
            raise FlashHeadError(f"probes must be an integer in [1, {self.num_clusters}], got {p!r}")
        self._probes = p

    def extra_repr(self) -> str:
        return (f"vocab={self.vocab}, hidden={self.hidden}, clusters={self.num_clusters}, "
                f"cluster_size={self.cluster_size}, probes={self.probes}, "
                f"quantization={self.config.quantization}")

    # ---- the two stages ------------------------------------------------------------------------

    def probe(self, h: torch.Tensor):
        """h [N, d] -> scores [N, K] fp32, token ids [N, P*cs], exact logits [N, P*cs] fp32."""
        scores = self.stage1(h)                                          # [N, K]
        top = scores.topk(self.probes, dim=1, sorted=False).indices      # [N, P]
        tok = self.block_ids[top].flatten(1)                             # [N, P*cs]
        rows = self.weight.index_select(0, tok.flatten()).view(*tok.shape, self.hidden)
        z = torch.bmm(rows, h.to(rows.dtype).unsqueeze(2)).squeeze(2).float()  # [N, P*cs]
        return scores, tok, z

    def _flat(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.hidden:
            raise FlashHeadError(f"hidden states have size {h.shape[-1]}, the head expects {self.hidden}")
        return h.reshape(-1, self.hidden)

    def greedy(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., d] -> token ids [...]: argmax over the exactly scored tokens."""
        lead = h.shape[:-1]
        _, tok, z = self.probe(self._flat(h))
        return tok.gather(1, z.argmax(1, keepdim=True)).view(lead)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., d] -> logits [..., V] fp32 over the whole vocabulary.

        Probed tokens carry their exact logit; every other token its cluster's mean logit, kept
        strictly below the best exact logit so that argmax(logits) == greedy(h).
        """
        lead = h.shape[:-1]
        scores, tok, z = self.probe(self._flat(h))
        best = z.max(dim=1, keepdim=True).values
        est = torch.minimum(scores, torch.nextafter(best, torch.full_like(best, float("-inf"))))
        logits = est.index_select(1, self.assignments)                   # [N, V]
        logits.scatter_(1, tok, z)
        return logits.view(*lead, self.vocab)
