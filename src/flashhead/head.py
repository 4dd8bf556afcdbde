"""FlashHead: the retrieval head that replaces `logits = h @ W.T`.

One decode step for hidden states h [N, d] (any leading dims are flattened):
    stage 1   s = h @ C.T                   [N, K]   cluster scores (C: the members' usage-weighted
                                                     means, calibrate.py: s_k is the mean logit
                                                     of the cluster's likely tokens)
    probe     top = topk(s, P)              [N, P]
    stage 2   z = h . W[block_ids[top]]     [N, P*cs] exact logits of the probed tokens
    greedy    block_ids[top][argmax z]      [N]      (fast path: no [N, V] tensor)
    logits    [N, V]: every token gets its estimate (estimate.py: its cluster's score plus a
              per-token offset), the probed tokens their exact z.

The head weight W is the model's own tensor (held by reference, never copied); the module adds
centroids, block ids and the estimate tables: a few percent of W.
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import kernels
from .config import FlashHeadError
from .estimate import unprobed_logits
from .index import ClusterIndex
from .kernels import Kernel, cpu, torch_ref, triton_path
from .kernels.graphs import GraphCache
from .q8rows import dense_logits, gather_rows
from .quant import Stage1

_PATHS = {Kernel.TORCH: torch_ref, Kernel.CPU: cpu, Kernel.TRITON: triton_path}

# The dense rule: a step whose stage-2 rows N*P*cs exceed `dense_above` * V runs the dense head
# instead (counted in `stats`). Off in the core (None); each integration sets the crossover it
# measured for its own dense head (integrations/hf.py, integrations/vllm/logits.py) unless the
# environment says FLASHHEAD_DENSE_RULE=0.
DENSE_RULE_ENV = "FLASHHEAD_DENSE_RULE"


def dense_rule(crossover: dict, weight: torch.Tensor) -> float | None:
    """An integration's `dense_above` for a head weight, from its measured crossovers
    {"device type": fraction of V, "device type/dtype": fraction of V} (the dtype entry first)."""
    if os.environ.get(DENSE_RULE_ENV, "1") == "0":
        return None
    kind = weight.device.type
    return crossover.get(f"{kind}/{str(weight.dtype).removeprefix('torch.')}", crossover.get(kind))


class FlashHead(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, index: ClusterIndex, probes: int | None = None,
                 check_fingerprint: bool = True, kernel: Kernel | str = Kernel.AUTO):
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
        self.build = index.build          # the build record (calibration, held-out agreement, ...)
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
        # int32 copies for the Triton kernels; within[v] = slot of token v inside its cluster
        within = torch.zeros(self.vocab, dtype=torch.int32)
        within[ids.flatten()] = torch.arange(self.cluster_size, dtype=torch.int32).repeat(ids.shape[0])
        self.register_buffer("block_ids32", ids.int().to(weight.device), persistent=False)
        self.register_buffer("assignments32", index.assignments.int().to(weight.device), persistent=False)
        self.register_buffer("within32", within.to(weight.device), persistent=False)
        self.register_buffer("offsets", index.offsets.float().to(weight.device), persistent=False)  # [V]
        exact = torch.tensor(index.config.exact_tokens, dtype=torch.int64)
        if exact.numel() and int(exact.max()) >= self.vocab:
            raise FlashHeadError(f"exact_tokens holds ids outside the vocabulary ({self.vocab})")
        self.register_buffer("exact_ids", exact.to(weight.device), persistent=False)            # [F]
        # their rows, gathered once (the steps multiply by them; fp32 like every exact logit)
        self.register_buffer("exact_rows", gather_rows(weight, self.exact_ids).float(), persistent=False)
        self.kernel = kernel
        self.dense_above: float | None = None   # the dense rule (see DENSE_RULE_ENV); None: off
        self.stats = {"flashhead_steps": 0, "dense_steps": 0}
        self._workspace = {}   # CPU kernel buffers, grown to the largest step
        self.cuda_graphs = True           # eager CUDA calls replay a captured step (kernels/graphs.py)
        self._graphs = GraphCache()
        self.stage1 = Stage1(index.centroids, index.config.quantization, weight.dtype, weight.device)

    @property
    def kernel(self) -> Kernel:
        return self._kernel

    @kernel.setter
    def kernel(self, k: Kernel | str) -> None:
        self._kernel = kernels.parse(k)
        # resolved once, here (an explicit choice fails here, clearly), not on every step
        self._resolved = kernels.resolve(self._kernel, self.weight.device)

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
                f"quantization={self.config.quantization}, exact_tokens={self.exact_ids.numel()}")

    # ---- the two stages ------------------------------------------------------------------------

    def _path(self):
        return _PATHS[self._resolved]

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, d] -> stage-1 cluster scores [N, K] fp32, as the kernel computes them."""
        return self._path().stage1(self, self._flat(h))

    def probe(self, h: torch.Tensor):
        """h [N, d] -> scores [N, K] fp32, token ids [N, P*cs], exact logits [N, P*cs] fp32."""
        return self._path().probe(self, h)

    def with_exact(self, h: torch.Tensor, tok: torch.Tensor, z: torch.Tensor):
        """Append the always-exact tokens (config.exact_tokens) to a step's token ids and exact
        logits [N, *] (a token also probed appears twice, with the same logit)."""
        if not self.exact_ids.numel():
            return tok, z
        return (torch.cat([tok, self.exact_ids.expand(tok.shape[0], -1)], 1),
                torch.cat([z, h.float() @ self.exact_rows.float().T], 1))

    def fill_logits(self, scores: torch.Tensor, tok: torch.Tensor, z: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """probe()'s scores [N, K], token ids and exact logits [N, P*cs] -> logits [N, V] fp32:
        the exact z where probed, estimate.unprobed_logits elsewhere (strictly below the best z,
        so argmax(logits) == greedy(h)). The TORCH and CPU paths return this; TRITON fuses it.
        (A spread correction, + beta/2 |h|^2 spread_k, lowered perplexity by ~1% but raised the
        TV distance by 40% on held-out text: not used, docs/FIDELITY.md.)"""
        out = unprobed_logits(scores, z.amax(1, keepdim=True), self.assignments, self.offsets, out=out)
        return out.scatter_(1, tok, z)

    def use_dense(self, n: int) -> bool:
        """The dense rule: N positions score N*P*cs stage-2 rows; above `dense_above` * V the
        dense head is cheaper. Counted in `stats`."""
        return self.dense_above is not None and n * self.probes * self.cluster_size > self.dense_above * self.vocab

    @contextlib.contextmanager
    def flashhead_only(self, probes: int | None = None, offsets: bool = True):
        """FlashHead at every batch size (the dense rule off), at `probes` if given, without the
        estimate's per-token offsets if `offsets=False`; all restored on exit. For measuring
        FlashHead itself (eval, bench, tests)."""
        saved = self._probes, self.dense_above, None if offsets else self.offsets.clone()
        self.dense_above = None
        try:
            if probes is not None:
                self.probes = probes
            if not offsets:
                self.offsets.zero_()
            yield self
        finally:
            self._probes, self.dense_above = saved[:2]
            if saved[2] is not None:
                self.offsets.copy_(saved[2])

    def _flat(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.hidden:
            raise FlashHeadError(f"hidden states have size {h.shape[-1]}, the head expects {self.hidden}")
        return h.reshape(-1, self.hidden)

    def greedy(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., d] -> token ids [...]: argmax over the exactly scored tokens."""
        lead, h = h.shape[:-1], self._flat(h)
        if self.use_dense(h.shape[0]):
            self.stats["dense_steps"] += 1
            return dense_logits(self.weight, h).argmax(1).view(lead)
        self.stats["flashhead_steps"] += 1
        return self._launch("greedy", h).view(lead)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., d] -> logits [..., V] fp32 over the whole vocabulary.

        Probed tokens carry their exact logit; every other token its estimate (fill_logits).
        """
        lead, h = h.shape[:-1], self._flat(h)
        if self.use_dense(h.shape[0]):
            self.stats["dense_steps"] += 1
            return dense_logits(self.weight, h).float().view(*lead, self.vocab)
        self.stats["flashhead_steps"] += 1
        return self._launch("logits", h).view(*lead, self.vocab)

    def _launch(self, name: str, h: torch.Tensor) -> torch.Tensor:
        fn = getattr(self._path(), name)
        if not (self.cuda_graphs and h.is_cuda):
            return fn(self, h)
        key = (name, h.shape[0], h.dtype, self._probes, self._resolved)
        return self._graphs.run(key, lambda x: fn(self, x), h)
