"""FlashHead: the retrieval head that replaces `logits = h @ W.T`.

The module a model calls: `forward(h)` -> logits [..., V], `greedy(h)` -> token ids [...]. Each call
is routed once by the head's dense rule (dense_rule.py) and otherwise runs one decode step
(kernels/step.py: stage 1 on the centroids, top-P clusters, exact stage 2, estimates for the rest)
on the kernel resolved for its device (kernels/__init__.py, run by the object kernels/registry.py
names). Stage-1 vectors are the members' usage-weighted means (calibrate.py): s_k is the mean logit
of the cluster's likely tokens.

The head weight W is the model's own tensor (held by reference), or GGUF Q8_0 blocks (q8rows.py);
the step reads it through `rows` (rows.py). The module adds centroids, block ids and the estimate
tables: a few percent of W. On the CPU it also keeps a copy of W's rows in cluster order
(`arrange`: one more W): a cluster's rows lie scattered over the model's tensor, and reading them in
place costs a cache and TLB miss per row, about twice the time of reading the same bytes in runs
(docs/KERNELS.md, "Rows in cluster order"). `arrange=False` reads them in place.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from .. import kernels
from .config import FlashHeadError
from .context import default_for, next_count
from .dense_rule import DenseRule
from .index import ClusterIndex, check_fingerprint as _check
from ..kernels import Kernel
from ..kernels.graphs import GraphCache
from ..kernels.registry import KERNELS
from ..kernels.step import Step, pick
from .rows import as_rows


class FlashHead(torch.nn.Module):
    def __init__(self, weight, index: ClusterIndex, probes: int | None = None,
                 check_fingerprint: bool = True, kernel: Kernel | str = Kernel.AUTO,
                 vocab_range: tuple[int, int] | None = None, means: torch.Tensor | None = None,
                 arrange: bool | None = None, context_probes: int | None = None):
        """`weight`: the head [V, d], a tensor or rows.HeadRows (e.g. q8rows.Q8Rows).

        `vocab_range=(start, end)`: a tensor-parallel shard (shard.py): `weight` holds the rows
        of tokens [start, end) only, logits come from `shard_logits`/`shard_top`; the caller checks
        the fingerprint on the whole head and, for a cosine index, passes the members' `means`
        [K, d] of the whole head.

        `context_probes`: of the P probes, the most that go to a sequence's own clusters when a
        call passes its context (context.py); None: the assets' value, else context.default_for(P),
        which then follows P when `probes` changes.

        `arrange`: keep a copy of the head's rows in cluster order for the CPU kernel's stage 2
        (taken here: a weight changed in place later is not seen by it); None = a whole head held
        as a CPU tensor (`should_arrange`); a shard or a GPU head is not arranged."""
        super().__init__()
        rows = as_rows(weight)
        self.full_vocab = index.vocab
        self.vocab_range = vocab_range
        n = index.vocab if vocab_range is None else vocab_range[1] - vocab_range[0]
        if len(rows.shape) != 2 or rows.shape[0] != n:
            raise FlashHeadError(f"head weight of shape {list(rows.shape)} does not match assets "
                                 f"built for vocabulary {index.vocab}"
                                 + ("" if vocab_range is None else f" (shard {list(vocab_range)})"))
        if rows.shape[1] != index.centroids.shape[1]:
            raise FlashHeadError(f"head hidden size {rows.shape[1]} does not match assets "
                                 f"(hidden size {index.centroids.shape[1]})")
        if check_fingerprint and vocab_range is None:
            _check(index.fingerprint, weight, "FlashHead assets")
        self.weight = weight  # the model's tensor, shared (not registered: the model owns it)
        self.config = index.config
        self.build = index.build          # the build record (calibration, held-out agreement, ...)
        # [V, m] each token's next clusters as the build stored them (build/successors.py); a step
        # uses the first `next_clusters` of them (the `successors` property). Moves with the module.
        self.register_buffer("next_table", index.successors, persistent=False)
        self.next_clusters = None         # None: next_count's rule from E
        self.vocab, self.hidden = rows.shape
        self.cluster_size = index.config.cluster_size
        self.num_clusters = index.num_clusters
        self._probes = None
        self.probes = index.config.probes if probes is None else probes
        if arrange not in (None, True, False):   # e.g. "false" from a JSON override: one clear line
            raise FlashHeadError(f"arrange (flash_head_arrange) takes true, false or null, not {arrange!r}")
        arrange = should_arrange(weight, vocab_range) if arrange is None else arrange
        if arrange and (vocab_range is not None or rows.device.type != "cpu"):
            raise FlashHeadError("arrange=True needs a whole head (no vocab_range) on the CPU")
        step = Step.from_index(index, rows, self.probes, vocab_range, means, arrange)
        for name in Step.TABLES:          # the step's tables move with the module (.to, .cuda)
            self.register_buffer(name, getattr(step, name), persistent=False)
        self.stage1, self.estimate = step.stage1, step.estimate
        self.step = step
        self.rule = DenseRule()           # off in the core; each integration sets its measured rule
        self.cuda_graphs = True           # eager CUDA calls replay a captured step (kernels/graphs.py)
        self._graphs = GraphCache()
        self.kernel = kernel
        if context_probes is None:
            context_probes = index.config.context_probes
        self.context_probes = default_for(self.probes) if context_probes is None else context_probes
        self._context_follows = context_probes is None   # the default E follows P (probes' setter)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)       # buffers moved or cast: the step refers to the new ones
        self.step = dataclasses.replace(self.step, rows=self.step.rows.apply(fn), stage1=self.stage1,
                                        estimate=self.estimate, probes=self.probes,
                                        **{name: getattr(self, name) for name in Step.TABLES})
        return self

    @property
    def rows(self):
        """The head's rows as the step reads them (rows.HeadRows: in place, or in cluster order)."""
        return self.step.rows

    @property
    def kernel(self) -> Kernel:
        return self._kernel

    @kernel.setter
    def kernel(self, k: Kernel | str) -> None:
        self._kernel = kernels.parse(k)
        # resolved once, here (an explicit choice fails here, clearly), not on every step
        self._resolved = kernels.resolve(self._kernel, self.rows.device)
        if self.vocab_range is not None and self._resolved is Kernel.TRITON:
            self._resolved = Kernel.TORCH    # the Triton kernels do not read a shard's tables
        self._step_kernel = KERNELS[self._resolved]

    @property
    def probes(self) -> int:
        return self._probes

    @probes.setter
    def probes(self, p: int) -> None:
        if not isinstance(p, int) or not 1 <= p <= self.num_clusters:
            raise FlashHeadError(f"probes must be an integer in [1, {self.num_clusters}], got {p!r}")
        self._probes = p
        if hasattr(self, "step"):
            self.step.probes = p
            if self._context_follows:     # no count was chosen: E stays the default share of P
                self.step.context_probes = default_for(p)

    @property
    def context_probes(self) -> int:
        """Of the P probes, the most that go to the clusters of the tokens a sequence holds (its
        context, context.py) when a call passes one; 0: stage 1 alone picks (step.rank)."""
        return self.step.context_probes

    @context_probes.setter
    def context_probes(self, e: int) -> None:
        if not isinstance(e, int) or not 0 <= e <= self.num_clusters:
            raise FlashHeadError(f"context_probes must be an integer in [0, {self.num_clusters}], got {e!r}")
        self.step.context_probes = e
        self._context_follows = False

    @property
    def successors(self) -> torch.Tensor | None:
        """[V, n] the next clusters a step's context adds for the token it has just read (context.py
        `with_next`): the first n of the build's, n = `next_clusters` if set, else next_count's share
        of E; None where the build has none or n is 0. Set to None to run without them."""
        if self.next_table is None:
            return None
        n = next_count(self.context_probes, self.next_table.shape[1]) if self.next_clusters is None \
            else min(self.next_clusters, self.next_table.shape[1])
        return self.next_table[:, :n] if n > 0 else None

    @successors.setter
    def successors(self, table: torch.Tensor | None) -> None:
        self.next_table = table

    @property
    def stats(self) -> dict:
        """Steps run by FlashHead and by the dense head (the dense rule's counts)."""
        return self.rule.stats

    @property
    def dense_above(self) -> float | None:
        return self.rule.above

    @dense_above.setter
    def dense_above(self, above: float | None) -> None:
        self.rule.above = above

    @property
    def arranged(self) -> bool:
        """Whether stage 2 reads a copy of the head's rows in cluster order."""
        return self.arranged_bytes > 0

    @property
    def arranged_bytes(self) -> int:
        """Bytes of the cluster-ordered copy of the head's rows (0: read in place)."""
        return self.rows.arranged_bytes

    def extra_repr(self) -> str:
        return (f"vocab={self.vocab}, hidden={self.hidden}, clusters={self.num_clusters}, "
                f"cluster_size={self.cluster_size}, probes={self.probes}, "
                f"quantization={self.config.quantization}, exact_tokens={self.exact_ids.numel()}, "
                f"arranged={self.arranged}")

    # ---- the step ------------------------------------------------------------------------------

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, d] -> stage-1 cluster scores [N, K] fp32, as the kernel computes them."""
        return self._step_kernel.stage1(self.step, self._flat(h, self.vocab_range is not None))

    def probe(self, h: torch.Tensor, context: torch.Tensor | None = None):
        """h [N, d] -> scores [N, K] fp32, token ids [N, P*cs (+F)], exact logits [N, P*cs (+F)]
        fp32 (F: the always-exact tokens); `context` [N, K] bool: each position's sequence's
        clusters (context.py), which take up to `context_probes` of the P probes."""
        return self._step_kernel.probe(self.step, h, context)

    def fill_logits(self, h: torch.Tensor, scores: torch.Tensor, tok: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """h [N, d] and probe(h)'s output -> logits [N, V] fp32 (kernels/step.py)."""
        return self.step.fill_logits(h, scores, tok, z)

    def route(self, n: int) -> bool:
        """The dense rule for a step of n positions (N*P*cs stage-2 rows): True -> dense. Counted."""
        return self.rule.dense(n * self.probes * self.cluster_size, self.full_vocab)

    @contextlib.contextmanager
    def flashhead_only(self, probes: int | None = None, offsets: bool = True):
        """FlashHead at every batch size (the dense rule off), at `probes` if given, without the
        estimate's per-token offsets if `offsets=False`; all restored on exit. For measuring
        FlashHead itself (eval, bench, tests)."""
        saved = self.probes, self.dense_above, None if offsets else self.offsets.clone()
        self.dense_above = None
        try:
            if probes is not None:
                self.probes = probes
            if not offsets:
                self.offsets.zero_()
            yield self
        finally:
            self.probes, self.dense_above = saved[:2]
            if saved[2] is not None:
                self.offsets.copy_(saved[2])

    def _flat(self, h: torch.Tensor, shard: bool = False) -> torch.Tensor:
        """h [..., d] -> [N, d]; `shard`: the call is a shard's (shard_logits/shard_top), which a
        whole head refuses, and a shard refuses every whole-vocabulary call."""
        if shard != (self.vocab_range is not None):
            raise FlashHeadError("a vocabulary shard's logits come from shard_logits/shard_top" if not shard
                                 else "shard_logits/shard_top need a head built with vocab_range")
        if h.shape[-1] != self.hidden:
            raise FlashHeadError(f"hidden states have size {h.shape[-1]}, the head expects {self.hidden}")
        return h.reshape(-1, self.hidden)

    def greedy(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """h [..., d] -> token ids [...]: argmax over the exactly scored tokens (the dense rule
        applies); `context` [N, K] bool: see probe."""
        lead, h = h.shape[:-1], self._flat(h)
        if self.route(h.shape[0]):
            return self.rows.dense(h).argmax(1).view(lead)
        return self.flash_greedy(h, context).view(lead)

    def forward(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """h [..., d] -> logits [..., V] fp32 over the whole vocabulary (the dense rule applies).

        Probed tokens carry their exact logit; every other token its estimate (fill_logits).
        """
        lead, h = h.shape[:-1], self._flat(h)
        if self.route(h.shape[0]):
            return self.rows.dense(h).float().view(*lead, self.vocab)
        return self.flash_logits(h, context).view(*lead, self.vocab)

    def score(self, h: torch.Tensor, targets: torch.Tensor, chunk: int = 512):
        """Teacher-forced scoring by FlashHead (whatever the dense rule): h [N, d] and the known next
        tokens `targets` [N] -> (their log-probabilities [N] fp32, FlashHead's greedy tokens [N]).

        A known target joins stage 2: its logit is exact (h . w_target), and the normaliser is the
        logsumexp of FlashHead's logits with that token exact (probed tokens exact, estimates
        elsewhere). The greedy token is the one FlashHead itself would pick (pick over the probed
        tokens), even where an unprobed target's exact logit is higher. In chunks of `chunk` rows:
        one [chunk, V] fp32 tensor at a time."""
        h, targets = self._flat(h), targets.reshape(-1)
        logp, greedy = [], []
        for s in range(0, h.shape[0], chunk):
            hs, ts = h[s:s + chunk], targets[s:s + chunk]
            scores, tok, z = self.probe(hs)
            logits = self.fill_logits(hs, scores, tok, z)
            exact = (hs.float() * self.rows.gather(ts).float()).sum(1, keepdim=True)
            logp.append((exact - logits.scatter_(1, ts[:, None], exact).logsumexp(1, keepdim=True)).squeeze(1))
            greedy.append(pick(tok, z))
        return torch.cat(logp), torch.cat(greedy)

    def flash_greedy(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """h [N, d] -> token ids [N] by FlashHead, whatever the dense rule (an integration that
        routed the step itself)."""
        return self._launch(self._step_kernel.greedy, self._flat(h), context)

    def flash_logits(self, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """h [N, d] -> logits [N, V] fp32 by FlashHead, whatever the dense rule."""
        return self._launch(self._step_kernel.logits, self._flat(h), context)

    # ---- a tensor-parallel shard (vocab_range; shard.py) -----------------------------------------

    def shard_logits(self, h: torch.Tensor, reduce_max=None, context: torch.Tensor | None = None) -> torch.Tensor:
        """h [N, d] -> this shard's logits [N, end - start] fp32 (a view; exact where probed). The
        estimates' cap is the best exact logit over all shards: `reduce_max` maps this shard's
        [N, 1] best to the maximum over the shards (vLLM: an all-reduce); None keeps the local one.
        `context`: as in probe (the same masks on every shard, so every shard probes the same
        clusters)."""
        h = self._flat(h, shard=True)
        scores, tok, z = self.probe(h, context)
        best = z.amax(1, keepdim=True)
        best = best if reduce_max is None else reduce_max(best)
        return self.step.fill_logits(h, scores, tok, z, best=best)[:, : self.vocab]

    def shard_top(self, h: torch.Tensor, context: torch.Tensor | None = None):
        """h [N, d] -> (best exact logit [N] fp32, its global token id [N]) within this shard; -inf
        where none of the position's probed tokens lies in the shard. The greedy token is the pair
        with the largest value over the shards."""
        h = self._flat(h, shard=True)
        _, tok, z = self.probe(h, context)
        best, j = z.max(1, keepdim=True)
        return best.squeeze(1), tok.gather(1, j).squeeze(1) + self.vocab_range[0]

    def _launch(self, fn, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None and self.context_probes:
            if context.shape != (h.shape[0], self.num_clusters):
                raise FlashHeadError(f"a context is [positions, clusters] = [{h.shape[0]}, "
                                     f"{self.num_clusters}], got {list(context.shape)}")
            return fn(self.step, h, context)      # eager: the captured graphs take h only
        if not (self.cuda_graphs and h.is_cuda):
            return fn(self.step, h)
        key = (fn, h.shape[0], h.dtype, self.probes, self._resolved)
        return self._graphs.run(key, lambda x: fn(self.step, x), h)


def should_arrange(weight, vocab_range=None) -> bool:
    """Whether FlashHead keeps the head's rows in cluster order by default: a whole head held as a
    CPU tensor, bf16 or fp32 (GGUF Q8_0 rows when asked: `arrange=True`). Gemma-3-270M (P = 1,532,
    batch 1, cold, the 2-core AVX2 host), the logits step in place -> arranged: bf16 16.6 -> 9.3 ms
    on one thread, 8.0 -> 5.4 on two; fp32 33.3 -> 19.4 and 19.1 -> 13.3
    (benchmarks/step_profile.py, docs/KERNELS.md). The price is one more copy of the head (logged by
    the integrations); `arrange=False` reads the rows in place."""
    return vocab_range is None and isinstance(weight, torch.Tensor) and weight.device.type == "cpu"
