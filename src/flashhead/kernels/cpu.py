"""CPU kernel: the reference step with int8 or int4 stage 1 through torch's packed kernels, stage 2
over the batch's union of probed clusters by the head's rows (rows.py: native kernels where a C
compiler is, else torch's ops in cache-sized chunks, kernels/rows_dot.py), preallocated workspaces,
`out=`.

Positions of a batch probe many of the same clusters (Gemma-3-270M, P=509, real text: 4 random
positions probe 1,240 distinct clusters, not 2,036; 16 probe 2,359, not 8,144; 64 probe 3,826 of
16,384), so stage 2 gathers each probed block once and multiplies it by all N hidden states.

Measured on the 2-core AVX-512 machine (Gemma-3-270M head, fp32): a fresh gather buffer of
P*cs rows per step costs page faults once it passes glibc's 32 MB mmap threshold (P=1024:
39 ms for the gather vs 7.7 ms into a reused buffer), so the buffers live on the step and grow
to the largest step seen. Results equal TORCH (same ops; bf16 stage-1 scores for int8, see stage1).

Rows may bring their own arithmetic: GGUF Q8_0 rows (q8rows.py, the llama.cpp backend) score
stage 1 as llama.cpp multiplies (`rows.scores`) and, with int8 centroids, run the whole step in one
native call (`rows.fused`: stage 1, top-P, stage 2, the greedy token).
"""
from __future__ import annotations

import torch

from . import native
from .step import pick

_INT8_MM = getattr(torch, "_weight_int8pack_mm", None)
_INT4_MM = getattr(torch, "_weight_int4pack_mm_for_cpu", None)
_INT4_PACK = getattr(torch, "_convert_weight_to_int4pack_for_cpu", None)
# native.rows_dot(w, _FIRST, h, run=R): all R rows of w, one run from row 0
_FIRST = torch.zeros(1, dtype=torch.int64)


class CpuKernel:
    def stage1(self, step, h: torch.Tensor) -> torch.Tensor:
        """Cluster scores [N, K] fp32: the rows' own arithmetic where they have one (Q8_0), else
        for int8 centroids bf16 activations and output, the arithmetic of torch's packed
        weight-only int8 kernel (`_weight_int8pack_mm`: 0.33 vs 3.98 ms for fp32 centroids,
        Gemma-3-270M, batch 1; its bf16 rounding left the dense top-1 recall unchanged on held-out
        text, docs/KERNELS.md), run by the native kernel (i8_stage1.c) where there is one, else by
        torch's. int4 centroids through torch's packed int4 kernel (`_int4_packed`;
        docs/KERNELS.md, "int4 stage 1")."""
        st = step.stage1
        own = step.rows.scores(st, h)
        if own is not None:
            return own
        if st.bits == 8 and native.available():
            # torch's arithmetic in one pass over the table (i8_stage1.c; docs/KERNELS.md, "CPU")
            return native.i8_scores_bf16(st.q, st.scale_bf16, h, torch.get_num_threads())
        if st.bits == 8 and _INT8_MM is not None:
            return _INT8_MM(h.to(torch.bfloat16), st.q, st.scale_bf16).float()
        if st.bits is None and st.centroids.dtype in native.ROW_DTYPES and native.available():
            # unquantized centroids: fp32 products in an order that does not depend on the batch (rows.c)
            return native.rows_dot(st.centroids, _FIRST, h.to(st.centroids.dtype), torch.get_num_threads(),
                                   run=st.num_rows)
        if st.bits == 4 and _int4_packed(st) is not None:
            packed, group, scales = st.cpu_int4
            return _INT4_MM(h.to(torch.bfloat16), packed, group, scales)[:, : st.num_rows].float()
        return st(h)

    def probe(self, step, h: torch.Tensor, context: torch.Tensor | None = None):
        fused = step.rows.fused(step, h, False, context)
        return self._probe(step, h, context) if fused is None else fused

    def greedy(self, step, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        fused = step.rows.fused(step, h, True, context)
        return pick(*self._probe(step, h, context)[1:]) if fused is None else fused

    def logits(self, step, h: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.empty(h.shape[0], step.vocab)                        # returned: caller owns it
        return step.fill_logits(h, *self.probe(step, h, context), out=out)

    def _probe(self, step, h: torch.Tensor, context: torch.Tensor | None = None):
        """Stage 2 over the union of the positions' probed clusters: each cluster block is read
        once per step however many positions probed it and multiplied by all N hidden states while
        still in the cache (`rows.dot`). Each position then reads its own clusters' logits, so the
        result is TORCH's up to the order of the fp32 sums; with the native kernels a position's
        logits do not depend on the rest of its batch, bit for bit (rows.c, i8_stage1.c: one
        summation order for every state)."""
        n, cs = h.shape[0], step.cluster_size
        scores = self.stage1(step, h)                                    # [N, K]
        top = step.rank(scores, context).topk(step.probes, dim=1, sorted=False).indices   # [N, P]
        used = None
        if n == 1:                           # the union is the position's own clusters
            union = top.view(-1).sort().values
        else:
            used = step.buffer("used", (step.num_clusters,), torch.int32).zero_()
            used.index_fill_(0, top.flatten(), 1)
            union = used.nonzero().squeeze(1)                            # [U] ascending
        z = step.rows.dot(union, step.block_rows, h, step.buffer)        # [N, U*cs]
        exact = step.rows.dot_tokens(step.exact_ids, h) if step.exact_ids.numel() else None   # [N, F]
        if n == 1:
            utok = step.block_ids[union].flatten()                       # [U*cs]
            return (scores, *step.with_exact(h, utok.unsqueeze(0), step.masked(z, union), exact))
        mine = step.masked(_own(z.view(n, -1, cs), used, top), top)
        return (scores, *step.with_exact(h, step.block_ids[top].flatten(1), mine, exact))  # [N, P*cs(+F)]


def _int4_packed(st):
    """int4 centroids in the layout of torch's weight-only int4 CPU kernel
    (`_weight_int4pack_mm_for_cpu`: nibbles 0..15 read as q + 8, a bf16 scale and zero per group
    of 32-256 columns; here quant.py's scales and zero 0; rows padded to a multiple of 16 with zero
    scales), made once per stage 1 and kept on it; None where torch lacks the kernel or the
    table's groups are not a size it takes (one scale per row of another width)."""
    if not hasattr(st, "cpu_int4"):
        group = st.hidden // st.scale.reshape(st.num_rows, -1).shape[1]
        st.cpu_int4 = None
        if group in (32, 64, 128, 256) and _INT4_MM is not None and _INT4_PACK is not None:
            rows = -(-st.num_rows // 16) * 16
            nibbles = torch.full((rows, st.hidden), 8, dtype=torch.int32)                   # [K', d]
            nibbles[: st.num_rows] = torch.stack([st.q & 0xF, st.q >> 4], 2).flatten(1)
            scales = torch.zeros(st.hidden // group, rows, 2, dtype=torch.bfloat16)
            scales[:, : st.num_rows, 0] = st.scale_bf16.reshape(st.num_rows, -1).T
            st.cpu_int4 = (_INT4_PACK(nibbles, 2), group, scales)
    return st.cpu_int4


def _own(z: torch.Tensor, used: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Each position's logits of its own probed clusters [N, P*cs], read off the logits z
    [N, U, cs] of the union of the step's clusters (ascending; `used` [K] marks them)."""
    slot = torch.cumsum(used, 0)[top] - 1                                # [N, P] place in the union
    return z[torch.arange(top.shape[0]).unsqueeze(1), slot].flatten(1)


CPU = CpuKernel()
