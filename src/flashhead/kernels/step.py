"""The decode step's operands: what every kernel reads, in one object the head owns.

    stage 1   scores = stage1(h)                   [N, K]      quant.Stage1 (int8/int4/fp)
    probe     top = topk(rank(scores), probes)     [N, P]      rank: the context's clusters first
    stage 2   z = h . rows[block_rows[top]]        [N, P*cs]   exact, + the always-exact tokens
    greedy    pick(tok, z)                         [N]         no [N, V] tensor
    logits    fill_logits(scores, tok, z)          [N, V]      estimate.unprobed_logits, z scattered

A kernel (kernels/registry.py) implements `probe`, `greedy` and `logits` of (step, h); none of them
sees the head module. The head's values are reached through `rows` (rows.py) only. Buffers a
kernel reuses across steps live here. `Step.from_index` builds the step of a ClusterIndex.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from ..core.config import FlashHeadError
from ..core.estimate import unprobed_logits
from ..core.quant import Stage1
from ..core.shard import member_means, shard_tables


def pick(tok: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Token ids [N, *] and their exact logits -> the greedy token [N]."""
    return tok.gather(1, z.argmax(1, keepdim=True)).squeeze(1)


@dataclasses.dataclass(eq=False)
class Step:
    rows: object                          # rows.HeadRows [V, d]: the head's rows, in place or arranged
    stage1: Stage1                        # h -> [N, K] fp32
    block_ids: torch.Tensor               # [K, cs] token ids of each cluster
    assignments: torch.Tensor             # [V] cluster of each token
    offsets: torch.Tensor                 # [V] fp32 the estimate's per-token offsets
    exact_ids: torch.Tensor               # [F] always-exact tokens
    exact_rows: torch.Tensor              # [F, d] fp32 their rows
    probes: int
    estimate: Stage1 | None = None        # None: the estimate starts from stage 1's scores
    context_probes: int = 0               # of the P probes, the most that go to the context's clusters
    # a vocabulary shard (shard.py): the rows stage 2 multiplies [K, cs], and [K, cs] -inf on the
    # slots whose token lies on another shard; None for a whole head (rows = token ids, every slot valid)
    shard_rows: torch.Tensor | None = None
    slot_bias: torch.Tensor | None = None

    # the tensors the head registers as its buffers (moved with it; from_index makes them)
    TABLES: ClassVar[tuple] = ("block_ids", "shard_rows", "slot_bias", "assignments", "offsets",
                               "exact_ids", "exact_rows")

    def __post_init__(self):
        self.block_rows = self.block_ids if self.shard_rows is None else self.shard_rows   # [K, cs]
        self.num_clusters, self.cluster_size = self.block_ids.shape
        self.hidden = self.rows.shape[1]
        self.vocab = self.assignments.numel()  # logits' width (a shard's: its tokens + the trash column)
        self.workspace: dict = {}             # the CPU kernel's buffers, grown to the largest step
        # int32 tables for the Triton kernels; within32[v] = slot of token v inside its cluster
        self.block_ids32, self.assignments32 = self.block_ids.int(), self.assignments.int()
        self.within32 = torch.empty_like(self.assignments32)
        self.within32[self.block_ids.flatten()] = torch.arange(
            self.cluster_size, dtype=torch.int32, device=self.block_ids.device).repeat(self.num_clusters)

    @classmethod
    def from_index(cls, index, rows, probes: int, vocab_range: tuple[int, int] | None = None,
                   means: torch.Tensor | None = None, arrange: bool = False) -> "Step":
        """The step of `index` (index.ClusterIndex) over the head rows `rows` (rows.HeadRows: the
        whole head, or with `vocab_range=(start, end)` a shard's rows of tokens [start, end)).
        `means` [K, d]: for a cosine index, the members' means of the whole head (computed here
        for a whole head); `arrange`: stage 2 reads a copy of the rows in cluster order."""
        device = rows.device
        ids, mask = index.blocks()
        exact = torch.tensor(index.config.exact_tokens, dtype=torch.int64)
        if exact.numel() and int(exact.max()) >= index.vocab:
            raise FlashHeadError(f"exact_tokens holds ids outside the vocabulary ({index.vocab})")
        if vocab_range is None:
            # A short last cluster (V % cs != 0) repeats its first token in the empty slots: the
            # repeat gets the same exact logit, so neither argmax nor the scatter changes.
            ids, assignments, offsets = torch.where(mask, ids, ids[:, :1]), index.assignments, index.offsets
            shard_rows = slot_bias = None
        else:
            ids, shard_rows, slot_bias, assignments, offsets, exact = shard_tables(
                ids, mask, index.assignments, index.offsets, exact, *vocab_range)
            shard_rows, slot_bias = shard_rows.to(device), slot_bias.to(device)
        ids, exact = ids.to(device), exact.to(device)
        cosine = index.config.stage1 == "cosine"        # published layout: rank by cosine (config.py)
        c = torch.nn.functional.normalize(index.centroids, dim=1) if cosine else index.centroids
        stage1 = Stage1(c, index.config.quantization, rows.dtype, device)
        # the estimate's cluster score: stage 1's own score, or for a cosine index the members' mean
        # logit h . mean(w) (one more [K, d] fp32 table, read by the logits path only)
        if cosine and means is None:
            if vocab_range is not None:
                raise FlashHeadError("a shard of a cosine (published) index needs the members' means "
                                     "of the whole head (means=)")
            means = member_means(rows, index.assignments, index.num_clusters)
        estimate = Stage1(means, "none", torch.float32, device) if cosine else None
        exact_rows = rows.gather(exact).float()   # gathered once (fp32 like every exact logit)
        return cls(rows=rows.arrange(ids) if arrange else rows, stage1=stage1, block_ids=ids,
                   assignments=assignments.to(device), offsets=offsets.float().to(device), exact_ids=exact,
                   exact_rows=exact_rows, probes=probes, estimate=estimate, shard_rows=shard_rows,
                   slot_bias=slot_bias)

    def buffer(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """A reused buffer of `shape` (no fresh multi-MB allocation, hence no page faults, per step)."""
        numel = 1
        for s in shape:
            numel *= s
        buf = self.workspace.get((name, dtype))
        if buf is None or buf.numel() < numel:
            with torch.inference_mode(False):   # a normal tensor: reusable inside and outside inference mode
                buf = self.workspace[(name, dtype)] = torch.empty(numel, dtype=dtype, device=self.block_ids.device)
        return buf[:numel].view(shape)

    def rank(self, scores: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Stage 1's scores [N, K] as top-P reads them. With a `context` [N, K] bool (each
        position's sequence: the clusters of the tokens it holds, context.py), the context's
        `context_probes` best-scored clusters rank above every other: P probes are then those
        (or fewer, if the context holds fewer) and stage 1's best to fill the rest, so a step
        still probes P clusters (the same bytes), always including stage 1's best P - E. The
        estimate keeps the raw scores. No context (or E = 0): the scores as they are."""
        if context is None or not self.context_probes:
            return scores
        e = min(self.context_probes, self.probes)
        mine = scores.masked_fill(~context, float("-inf")).topk(e, dim=1, sorted=False).indices   # [N, E]
        lift = scores.amax(1, keepdim=True) + 1.0          # above every score, in the scores' range
        held = context.gather(1, mine)                     # a context with fewer than E clusters
        return scores.scatter(1, mine, torch.where(held, lift, scores.gather(1, mine)))

    def probed(self, scores: torch.Tensor, context: torch.Tensor | None = None):
        """The clusters a step probes [N, P] (the best `probes` by `rank`, unordered) and their
        token ids [N, P*cs]."""
        top = self.rank(scores, context).topk(self.probes, dim=1, sorted=False).indices
        return top, self.block_ids[top].flatten(1)

    def masked(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """A shard's exact logits z [N, B*cs] of the clusters `blocks` [N, B] (or [B], one
        position): -inf on slots whose token is on another shard. A whole head: z unchanged."""
        if self.slot_bias is None:
            return z
        return z.add_(self.slot_bias[blocks].reshape(-1, z.shape[-1]))

    def with_exact(self, h: torch.Tensor, tok: torch.Tensor, z: torch.Tensor, exact: torch.Tensor | None = None):
        """Append the always-exact tokens to a step's token ids and exact logits [N, *] (a token
        also probed appears twice, with the same logit); `exact` [N, F]: their logits, if a kernel
        computed them (else h @ exact_rows.T)."""
        if not self.exact_ids.numel():
            return tok, z
        return (torch.cat([tok, self.exact_ids.expand(tok.shape[0], -1)], 1),
                torch.cat([z, h.float() @ self.exact_rows.T if exact is None else exact], 1))

    def cluster_logits(self, h: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The estimate's per-cluster score [N, K]: stage 1's own ("mean" index), or the members'
        mean logit for a "cosine" index whose stage-1 scores only rank (config.py)."""
        return scores if self.estimate is None else self.estimate(h)

    def fill_logits(self, h: torch.Tensor, scores: torch.Tensor, tok: torch.Tensor, z: torch.Tensor,
                    out: torch.Tensor | None = None, best: torch.Tensor | None = None) -> torch.Tensor:
        """h [N, d] and probe's scores [N, K], token ids and exact logits [N, *] -> logits [N, V]
        fp32: the exact z where probed, the estimate elsewhere (strictly below the best exact
        logit, so argmax == pick; `best` [N, 1]: a shard's is the maximum over all shards)."""
        best = z.amax(1, keepdim=True) if best is None else best
        out = unprobed_logits(self.cluster_logits(h, scores), best, self.assignments, self.offsets, out=out)
        return out.scatter_(1, tok, z)
