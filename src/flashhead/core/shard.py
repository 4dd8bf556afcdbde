"""A vocabulary shard: the step's tables for one contiguous range of token ids.

Tensor parallelism (vLLM's ParallelLMHead) gives each rank the head rows of the tokens
[start, end). Stage 1 and the choice of clusters stay whole and replicated (small, and every rank
must probe the same clusters); stage 2 on a rank reads only the probed clusters' rows that lie in
its range. A cluster's members are spread over the vocabulary, so a probed cluster has some, all
or none of its 16 tokens on a rank. The tables below keep the step's shapes static:

    block_ids  [K, cs]  local token id of each slot; a slot whose token is elsewhere (or an empty
                        slot of a short cluster) names the TRASH column `end - start`
    block_rows [K, cs]  the row a slot multiplies (trash slots: row 0, their product is discarded)
    slot_bias  [K, cs]  0, or -inf on trash slots: their exact logit never wins and never raises
                        the best exact logit that caps the estimates
    assignments, offsets [V_l + 1]   the local tokens' clusters and offsets, plus the trash column

Logits come out [N, V_l + 1]; the trash column is dropped by the caller. The estimate's cap (the
best exact logit of the position) is a maximum over all ranks: the caller reduces it (vLLM: one
[N, 1] all-reduce) so that every rank's estimates are the single-rank ones.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .config import FlashHeadError
from .rows import as_rows


class ShardTables(NamedTuple):
    block_ids: torch.Tensor
    block_rows: torch.Tensor
    slot_bias: torch.Tensor
    assignments: torch.Tensor
    offsets: torch.Tensor
    exact_ids: torch.Tensor


def shard_tables(ids: torch.Tensor, mask: torch.Tensor, assignments: torch.Tensor,
                 offsets: torch.Tensor, exact_ids: torch.Tensor, start: int, end: int) -> ShardTables:
    """ids, mask [K, cs] (index.blocks()), assignments and offsets [V], exact_ids [F] (global ids)
    -> the tables of the shard [start, end)."""
    vocab = assignments.numel()
    if not 0 <= start < end <= vocab:
        raise FlashHeadError(f"vocabulary shard [{start}, {end}) is not inside [0, {vocab})")
    local = end - start
    inside = mask & (ids >= start) & (ids < end)
    block_ids = torch.where(inside, ids - start, torch.full_like(ids, local))
    block_rows = torch.where(inside, ids - start, torch.zeros_like(ids))
    slot_bias = torch.zeros(ids.shape, dtype=torch.float32).masked_fill_(~inside, float("-inf"))
    trash = torch.zeros(1, dtype=assignments.dtype)
    return ShardTables(
        block_ids, block_rows, slot_bias,
        torch.cat([assignments[start:end], trash]),
        torch.cat([offsets[start:end].float(), torch.zeros(1)]),
        exact_ids[(exact_ids >= start) & (exact_ids < end)] - start)


def member_sums(weight_rows, assignments: torch.Tensor, k: int, chunk: int = 32768):
    """Per-cluster sums [K, d] fp32 and counts [K] of the given rows (a tensor or rows.HeadRows; a
    shard's part of the members' means: the caller adds the parts of all ranks)."""
    rows = as_rows(weight_rows)
    v, d = rows.shape
    sums = torch.zeros(k, d)
    for s in range(0, v, chunk):
        ids = torch.arange(s, min(s + chunk, v))
        sums.index_add_(0, assignments[ids].cpu(), rows.gather(ids.to(assignments.device)).float().cpu())
    return sums, torch.bincount(assignments[:v].cpu(), minlength=k).float()


def member_means(weight, assignments: torch.Tensor, k: int, chunk: int = 32768) -> torch.Tensor:
    """[K, d] fp32: the plain mean of each cluster's head rows (any head form, read in chunks)."""
    sums, counts = member_sums(weight, assignments, k, chunk)
    return sums / counts.clamp_min(1).unsqueeze(1)
