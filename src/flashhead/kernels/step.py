"""The decode step's operands: what every kernel reads, in one object the head owns.

    stage 1   scores = stage1(h)                   [N, K]      quant.Stage1 (int8/int4/fp)
    probe     top = topk(scores, probes)           [N, P]
    stage 2   z = h . weight[block_ids[top]]       [N, P*cs]   exact, + the always-exact tokens
    greedy    pick(tok, z)                         [N]         no [N, V] tensor
    logits    fill_logits(scores, tok, z)          [N, V]      estimate.unprobed_logits, z scattered

A kernel module (torch_ref, cpu, triton_path) implements `probe`, `greedy` and `logits` of
(step, h); none of them sees the head module. Buffers a kernel reuses across steps live here.
"""
from __future__ import annotations

import torch

from ..estimate import unprobed_logits


def pick(tok: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Token ids [N, *] and their exact logits -> the greedy token [N]."""
    return tok.gather(1, z.argmax(1, keepdim=True)).squeeze(1)


class Step:
    def __init__(self, weight, stage1, block_ids, assignments, offsets, exact_ids, exact_rows,
                 probes: int, estimate=None, block_rows=None, slot_bias=None, arranged=None):
        self.weight = weight                  # [V, d] the model's head (a tensor or q8rows.Q8Rows)
        # None, or a copy of the head's rows in cluster order [K*cs, d] (cluster k: rows k*cs...):
        # the CPU kernel's stage 2 then reads each probed cluster as one run (FlashHead's `arrange`)
        self.arranged = arranged
        self.stage1 = stage1                  # quant.Stage1: h -> [N, K] fp32
        self.block_ids = block_ids            # [K, cs] token ids of each cluster
        self.assignments = assignments        # [V] cluster of each token
        self.offsets = offsets                # [V] fp32 the estimate's per-token offsets
        self.exact_ids = exact_ids            # [F] always-exact tokens
        self.exact_rows = exact_rows          # [F, d] fp32 their rows
        self.probes = probes
        self.estimate = estimate              # None: the estimate starts from stage 1's scores
        # a vocabulary shard (shard.py): the rows stage 2 multiplies, and -inf on the slots whose
        # token lies on another shard; None for a whole head (rows = token ids, every slot valid)
        self.block_rows = block_ids if block_rows is None else block_rows
        self.slot_bias = slot_bias
        self.num_clusters, self.cluster_size = block_ids.shape
        self.hidden = weight.shape[1]
        self.vocab = assignments.numel()      # logits' width (a shard's: its tokens + the trash column)
        self.workspace: dict = {}             # the CPU kernel's buffers, grown to the largest step
        # int32 tables for the Triton kernels; within32[v] = slot of token v inside its cluster
        self.block_ids32, self.assignments32 = block_ids.int(), assignments.int()
        self.within32 = torch.empty_like(self.assignments32)
        self.within32[block_ids.flatten()] = torch.arange(
            self.cluster_size, dtype=torch.int32, device=block_ids.device).repeat(self.num_clusters)

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

    def probed(self, scores: torch.Tensor):
        """The clusters a step probes [N, P] (stage 1's best `probes`, unordered) and their token
        ids [N, P*cs]."""
        top = scores.topk(self.probes, dim=1, sorted=False).indices
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
