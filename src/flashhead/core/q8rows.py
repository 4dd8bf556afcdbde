"""Head rows (rows.py) kept in GGUF's Q8_0 form: the model file's own bytes, never a dense copy.

Each row is d/32 blocks of (fp16 scale, 32 int8): 34 bytes per 32 values, 0.27 of fp32's bytes.
llama.cpp models (backends/llamacpp.py) tie or store their head this way; FlashHead reads the
probed rows in place through the native kernel (kernels/q8_0.c), so the extra memory FlashHead adds
is its index only (and, arranged, one copy of the head's Q8_0 bytes in cluster order). Every
product is computed as llama.cpp computes its logits (h quantized to Q8_0 blocks, integer block
dots): stage 1 on int8 centroids too, and with an int8 stage 1 the whole step runs in one native
call (`fused`).
"""
from __future__ import annotations

import torch

from .config import FlashHeadError
from ..kernels.native import i8_scores, library
from .rows import runs

QK = 32            # values per block
BLOCK_BYTES = 34   # fp16 scale + 32 int8


class Q8Rows:
    dtype = torch.float32          # the dtype its products come out in
    device = torch.device("cpu")

    def __init__(self, blocks: torch.Tensor, hidden: int, threads: int | None = None):
        """blocks: uint8 [V, hidden/32*34] (e.g. torch.from_numpy of the GGUF tensor's memmap);
        `threads`: the native kernels' OpenMP threads (default: torch's)."""
        if hidden % QK or blocks.dtype != torch.uint8 or blocks.dim() != 2 \
                or blocks.shape[1] != hidden // QK * BLOCK_BYTES or not blocks.is_contiguous():
            raise FlashHeadError(f"not a Q8_0 head of hidden size {hidden}: uint8 "
                                 f"{list(blocks.shape)}, contiguous={blocks.is_contiguous()}")
        self.blocks = blocks      # the rows stage 2 reads: the file's, or a cluster-ordered copy
        self.file_blocks = blocks   # the file's rows by token id (the dense head reads these)
        self.shape = torch.Size([blocks.shape[0], hidden])
        self.row_of = None        # token -> row of `blocks` once arranged in cluster order
        self.cluster_size = None
        self.threads = torch.get_num_threads() if threads is None else threads

    @property
    def arranged_bytes(self) -> int:
        return 0 if self.row_of is None else self.blocks.numel() + self.row_of.numel() * 8

    def arrange(self, slots: torch.Tensor) -> "Q8Rows":
        """The rows in cluster order (slots [K, cs]: cluster k's tokens): one copy of the head's
        Q8_0 bytes (no dense copy) where each cluster is one contiguous run of cs rows. The file's
        rows are scattered over the whole tensor: gathering them costs a cache and TLB miss per
        row, about 2x the time of reading the same bytes in runs (kernels/q8_0.c). The file's own
        tensor is then touched only where llama.cpp looks up input embeddings and by the dense head."""
        ids = slots.reshape(-1).to(torch.int64)
        out = Q8Rows(self.file_blocks, self.shape[1], self.threads)
        out.blocks = self.file_blocks.index_select(0, ids)
        out.row_of = torch.empty(self.shape[0], dtype=torch.int64)
        out.row_of[ids.flip(0)] = torch.arange(ids.numel() - 1, -1, -1)   # first slot of a repeated token
        out.cluster_size = slots.shape[1]
        return out

    def apply(self, fn) -> "Q8Rows":
        return self               # the file's bytes stay where they are

    def _positions(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.reshape(-1).to(torch.int64)
        return (ids if self.row_of is None else self.row_of[ids]).contiguous()

    def gather(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows [R, d] fp32 of token ids [R]."""
        ids = self._positions(ids)
        out = torch.empty(ids.numel(), self.shape[1])
        library().fh_q8_rows(self.blocks.data_ptr(), self.blocks.shape[1], ids.data_ptr(),
                             ids.numel(), self.shape[1], out.data_ptr())
        return out

    def _dot(self, rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Exact logits [N, R] fp32 of rows [R] of `blocks` (kernels/q8_0.c fh_q8_dot)."""
        rows = rows.reshape(-1).to(torch.int64).contiguous()
        h = h.float().contiguous()
        out = torch.empty(h.shape[0], rows.numel())
        library().fh_q8_dot(self.blocks.data_ptr(), self.blocks.shape[1], rows.data_ptr(), rows.numel(),
                            h.data_ptr(), h.shape[0], self.shape[1], out.data_ptr(), self.threads)
        return out

    def dot(self, clusters, slots, h, buffer=None):
        if self.row_of is None:                  # the file's order: the slots' rows
            return self._dot(slots[clusters].flatten(), h)
        return self._dot(runs(clusters, self.cluster_size), h)   # cluster order: runs of rows

    def dot_tokens(self, ids, h):
        return self._dot(self._positions(ids), h)

    def dense(self, h: torch.Tensor) -> torch.Tensor:
        """The dense head [N, V] fp32: every row of the file in one pass, each row read once for all
        N states (kernels/q8_0.c fh_q8_dense), each logit the product `dot` computes for that
        token, bit for bit."""
        h = h.float().contiguous()
        out = torch.empty(h.shape[0], self.shape[0])
        library().fh_q8_dense(self.file_blocks.data_ptr(), self.file_blocks.shape[1], self.shape[0],
                              h.data_ptr(), h.shape[0], self.shape[1], out.data_ptr(), self.threads)
        return out

    def dense_argmax(self, h: torch.Tensor) -> torch.Tensor:
        """`dense(h).argmax(1)` without the [N, V] logits (kernels/q8_0.c fh_q8_dense_argmax)."""
        h = h.float().contiguous()
        best = torch.empty(h.shape[0], dtype=torch.int64)
        value = torch.empty(h.shape[0])
        library().fh_q8_dense_argmax(self.file_blocks.data_ptr(), self.file_blocks.shape[1], self.shape[0],
                                     h.data_ptr(), h.shape[0], self.shape[1], best.data_ptr(),
                                     value.data_ptr(), self.threads)
        return best

    def scores(self, stage1, h):
        """int8 centroids: int8 x int8 block dots in the native kernel (q8_0.c), on llama.cpp's
        threads (Gemma's 16,384 centroids on the 2-core AVX2 host, warm / cold: torch's int8 kernel
        1.52 / 2.32 ms, this one 0.41 / 1.03 ms; benchmarks/q8_step.py)."""
        if stage1.bits == 8 and stage1.hidden % QK == 0:
            return i8_scores(stage1.q, stage1.scale, h, self.threads)
        return None

    def fused(self, step, h: torch.Tensor, greedy: bool, context: torch.Tensor | None = None):
        """With int8 centroids, the whole step in one native call (q8_0.c fh_q8_step): stage 1,
        top-P (the context's clusters first: step.rank), stage 2 with llama.cpp's products, and
        with `greedy` the greedy token."""
        st = step.stage1
        if st.bits != 8 or step.hidden % QK:
            return None
        n, k, p, cs, f = h.shape[0], step.num_clusters, step.probes, step.cluster_size, step.exact_ids.numel()
        h = h.float().contiguous()

        def alloc(name, shape, dtype):   # greedy returns only tokens: its scores and logits are reused
            return step.buffer(name, shape, dtype) if greedy else torch.empty(shape, dtype=dtype)

        scores = alloc("q8_scores", (n, k), torch.float32)
        top = alloc("q8_top", (n, p), torch.int64)
        z = alloc("q8_z", (n, p * cs + f), torch.float32)
        scratch = step.buffer("q8_scratch", (n, k), torch.int64)
        rows = step.buffer("q8_rows", (n, p * cs + f), torch.int64)
        slots = step.block_ids.reshape(-1)                                  # [K*cs] tokens by slot
        exact_rows = self._positions(step.exact_ids)
        out = torch.empty(n, dtype=torch.int64) if greedy else None
        e = step.context_probes if context is not None else 0
        ctx = context.to(torch.uint8).contiguous() if e else None
        ranked = step.buffer("q8_ranked", (n, k), torch.float32) if e else None
        library().fh_q8_step(
            st.q.data_ptr(), st.scale.data_ptr(), k, p, self.blocks.data_ptr(), self.blocks.shape[1], cs,
            None if self.row_of is not None else slots.data_ptr(), exact_rows.data_ptr(), f, h.data_ptr(), n,
            step.hidden, scores.data_ptr(), top.data_ptr(), z.data_ptr(), scratch.data_ptr(), rows.data_ptr(),
            self.threads, slots.data_ptr(), step.exact_ids.data_ptr(), None if out is None else out.data_ptr(),
            None if ctx is None else ctx.data_ptr(), e, None if ranked is None else ranked.data_ptr())
        if greedy:
            return out
        tok = torch.cat([step.block_ids[top].flatten(1), step.exact_ids.expand(n, -1)], 1)
        return scores, tok, z
