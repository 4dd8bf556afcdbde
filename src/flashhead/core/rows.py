"""Head rows: the head weight W [V, d] as the step and the dense head read it, whatever its storage.

    TensorRows    the model's tensor, read in place (held by reference)
    ArrangedRows  a copy of a tensor's rows in cluster order: cluster k is rows k*cs ... k*cs+cs-1,
                  so stage 2 reads each probed cluster as one run (kernels/rows.c, run = cs)
    Q8Rows        GGUF Q8_0 blocks, the model file's own bytes (q8rows.py)

A vocabulary shard (shard.py) is a tensor's rows of its tokens [start, end): TensorRows, read
through the step's slot table (`slots` below: local rows, trash slots on row 0).

Every storage offers the operations of `HeadRows`; the TORCH and CPU kernels (kernels/) reach the
head's values through them only, the Triton kernel reads a tensor's rows in place (`weight`).
`as_rows` takes a tensor or a HeadRows.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..kernels import native
from ..kernels.rows_dot import rows_dot


class HeadRows(Protocol):
    shape: torch.Size            # [V, d]
    dtype: torch.dtype           # of `gather`'s rows (Q8_0: fp32, dequantized)
    device: torch.device
    arranged_bytes: int          # bytes of a copy of the rows in cluster order (0: read in place)

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows [R, d] of token ids [R]."""

    def dot(self, clusters: torch.Tensor, slots: torch.Tensor, h: torch.Tensor, buffer) -> torch.Tensor:
        """Exact logits [N, U*cs] fp32 of the rows of `clusters` [U] (ascending) for h [N, d]:
        stage 2. `slots` [K, cs]: the row each cluster slot reads in place (the step's table);
        `buffer(name, shape, dtype)`: the step's reused workspace."""

    def dot_tokens(self, ids: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Exact logits [N, R] fp32 of token ids [R] for h [N, d] (the always-exact tokens)."""

    def dense(self, h: torch.Tensor) -> torch.Tensor:
        """The dense head h @ W.T [N, V] (in W's dtype; Q8_0: fp32, llama.cpp's products)."""

    def dense_argmax(self, h: torch.Tensor) -> torch.Tensor:
        """The dense head's greedy tokens [N], `dense(h).argmax(1)`."""

    def arrange(self, slots: torch.Tensor) -> "HeadRows":
        """The same rows kept in cluster order (slots [K, cs]: cluster k's tokens)."""

    def apply(self, fn) -> "HeadRows":
        """These rows after a module's `_apply(fn)` (.to, .cuda, ...): fn applied to the tensors
        this object owns (a copy in cluster order); the model's own tensor is its owner's to move."""

    def scores(self, stage1, h: torch.Tensor) -> torch.Tensor | None:
        """Stage-1 scores [N, K] in this storage's own arithmetic, or None (the kernel's)."""

    def fused(self, step, h: torch.Tensor, greedy: bool, context: torch.Tensor | None = None):
        """The whole step in one native call (probe's output, or with `greedy` the tokens [N]), or
        None where this storage has none for the step; `context` [N, K] bool: step.rank."""


def as_rows(weight) -> HeadRows:
    """A head weight as HeadRows: a tensor read in place, or the HeadRows given."""
    return TensorRows(weight) if isinstance(weight, torch.Tensor) else weight


def runs(clusters: torch.Tensor, cs: int) -> torch.Tensor:
    """Rows of `clusters` [U] in a cluster-ordered table (cluster k: rows k*cs ... k*cs+cs-1) [U*cs]."""
    return (clusters.unsqueeze(1) * cs + torch.arange(cs, device=clusters.device)).flatten()


class TensorRows:
    """The model's tensor [V, d], read in place (any dtype; rows.c reads bf16 and fp32, torch's ops
    the others)."""

    arranged_bytes = 0

    def __init__(self, weight: torch.Tensor):
        self.weight = weight     # the model's tensor, shared (the model owns it)

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight.detach().index_select(0, ids.reshape(-1).to(self.weight.device))

    def dot(self, clusters, slots, h, buffer):
        return rows_dot(self.weight, slots[clusters].flatten(), h, buffer, slots.shape[1])

    def dot_tokens(self, ids, h):
        if self.weight.dtype in native.ROW_DTYPES and native.available():
            return native.rows_dot(self.weight, ids, h, torch.get_num_threads())
        return h.float() @ self.gather(ids).float().T

    def dense(self, h):
        return torch.nn.functional.linear(h, self.weight)

    def dense_argmax(self, h):
        return self.dense(h).argmax(1)

    def arrange(self, slots) -> "ArrangedRows":
        return ArrangedRows(self, self.weight.index_select(0, slots.flatten()), slots.shape[1])

    def apply(self, fn) -> "TensorRows":
        return self

    def scores(self, stage1, h):
        return None

    def fused(self, step, h, greedy, context=None):
        return None


class ArrangedRows(TensorRows):
    """A tensor's rows copied in cluster order, `table` [K*cs, d]: one more copy of the head. A
    cluster's rows lie scattered over the model's tensor, and reading them in place costs a cache
    and TLB miss per row, about twice the time of reading the same bytes in runs (docs/KERNELS.md,
    "Rows in cluster order"). Taken once: a weight changed in place later is not seen by stage 2.
    Everything but stage 2 reads the model's tensor."""

    def __init__(self, source: TensorRows, table: torch.Tensor, cluster_size: int):
        super().__init__(source.weight)
        self.source, self.table, self.cluster_size = source, table, cluster_size

    @property
    def arranged_bytes(self) -> int:
        return self.table.numel() * self.table.element_size()

    def dot(self, clusters, slots, h, buffer):
        return rows_dot(self.table, clusters, h, buffer, self.cluster_size, run=self.cluster_size)

    def arrange(self, slots) -> "ArrangedRows":
        return self.source.arrange(slots)

    def apply(self, fn) -> "ArrangedRows":
        return ArrangedRows(self.source, fn(self.table), self.cluster_size)
