"""CPU kernel: the reference step with int8 or int4 stage 1 through torch's packed kernels, stage 2
over the batch's union of probed clusters (native kernels where a C compiler is, else torch's ops
in cache-sized chunks), preallocated workspaces, `out=`.

Positions of a batch probe many of the same clusters (Gemma-3-270M, P=509, real text: 4 random
positions probe 1,240 distinct clusters, not 2,036; 16 probe 2,359, not 8,144; 64 probe 3,826 of
16,384), so stage 2 gathers each probed block once and multiplies it by all N hidden states.

Measured on the 2-core AVX-512 machine (Gemma-3-270M head, fp32): a fresh gather buffer of
P*cs rows per step costs page faults once it passes glibc's 32 MB mmap threshold (P=1024:
39 ms for the gather vs 7.7 ms into a reused buffer), so the buffers live on the step and grow
to the largest step seen. Results equal TORCH (same ops; bf16 stage-1 scores for int8, see stage1).

A head kept in GGUF's Q8_0 blocks (q8rows.py, the llama.cpp integration) runs its whole step in
one native call instead (q8_0.c `fh_q8_step`): stage 1 on the int8 centroids, top-P, stage 2 with
llama.cpp's own products (h quantized to Q8_0 blocks), the greedy token.
"""
from __future__ import annotations

import logging

import torch

from ..config import FlashHeadError
from ..q8rows import Q8Rows
from . import native
from .step import pick

_INT8_MM = getattr(torch, "_weight_int8pack_mm", None)
_INT4_MM = getattr(torch, "_weight_int4pack_mm_for_cpu", None)
_INT4_PACK = getattr(torch, "_convert_weight_to_int4pack_for_cpu", None)
# native.rows_dot(w, _FIRST, h, run=R): all R rows of w, one run from row 0
_FIRST = torch.zeros(1, dtype=torch.int64)
# torch's-ops stage 2 (no C compiler): gathered rows per chunk. Measured (Gemma-3-270M head, 8,144 rows, 2 threads, cold):
# one gather + one product 4.7 ms; chunks of 128 / 256 / 512 / 1024 rows 4.3 / 3.7 / 3.4 / 3.4 ms.
CHUNK_ROWS = 1024
# From this many positions on, `rows @ h.T` beats `h @ rows.T` (1,024 rows x 640, 2 threads, warm:
# N=4 388 vs 132 us, N=8 390 vs 140 us, N=16 166 vs 223 us, N=64 468 vs 611 us).
WIDE_BATCH = 16


def stage1(step, h: torch.Tensor) -> torch.Tensor:
    """Cluster scores [N, K] fp32. int8 centroids: bf16 activations and output, the arithmetic of
    torch's packed weight-only int8 kernel (`_weight_int8pack_mm`: 0.33 vs 3.98 ms for fp32
    centroids, Gemma-3-270M, batch 1; its bf16 rounding left the dense top-1 recall unchanged on
    held-out text, docs/KERNELS.md), run by the native kernel (i8_stage1.c) where there is one,
    else by torch's. int4 centroids through torch's packed int4 kernel (`_int4_packed`;
    docs/KERNELS.md, "int4 stage 1")."""
    st = step.stage1
    if st.bits == 8 and isinstance(step.weight, Q8Rows) and st.hidden % 32 == 0:
        # the llama.cpp path: int8 x int8 block dots in the native kernel (q8_0.c), on llama.cpp's
        # OpenMP threads (Gemma's 16,384 centroids on the 2-core AVX2 host, warm / cold: torch's
        # int8 kernel 1.52 / 2.32 ms, this one 0.41 / 1.03 ms; benchmarks/q8_step.py)
        return native.i8_scores(st.q, st.scale, h, step.weight.threads)
    if st.bits == 8 and _native():
        # torch's arithmetic, the table read at the memory's rate (i8_stage1.c). Gemma-3-270M's
        # 16,384 x 640 table, cold, ms, torch's kernel / this one: one thread 3.6 / 1.9 (batch 1),
        # 22.0 / 10.9 (16), 86.3 / 50.7 (64); two threads 2.2 / 1.3, 11.0 / 6.6, 40.6 / 30.1
        return native.i8_scores_bf16(st.q, st.scale_bf16, h, torch.get_num_threads())
    if st.bits == 8 and _INT8_MM is not None:
        return _INT8_MM(h.to(torch.bfloat16), st.q, st.scale_bf16).float()
    if st.bits is None and st.centroids.dtype in native.ROW_DTYPES and _native():
        # unquantized centroids: fp32 products in an order that does not depend on the batch (rows.c)
        return native.rows_dot(st.centroids, _FIRST, h.to(st.centroids.dtype), torch.get_num_threads(),
                               run=st.num_rows)
    if st.bits == 4 and _int4_packed(st) is not None:
        packed, group, scales = st.cpu_int4
        return _INT4_MM(h.to(torch.bfloat16), packed, group, scales)[:, : st.num_rows].float()
    return st(h)


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


def probe(step, h: torch.Tensor):
    if _q8_fused(step):
        return _q8_step(step, h, False)
    return _probe(step, h)


def _probe(step, h: torch.Tensor):
    """Stage 2 over the union of the positions' probed clusters: each cluster block is read once
    per step however many positions probed it and multiplied by all N hidden states while still in
    the cache (the native kernel; without one, torch's ops on chunks of CHUNK_ROWS gathered rows).
    Each position then reads its own clusters' logits, so the result is TORCH's up to the order of
    the fp32 sums; with the native kernels a position's logits do not depend on the rest of its
    batch, bit for bit."""
    n, cs = h.shape[0], step.cluster_size
    scores = stage1(step, h)                                             # [N, K]
    top = scores.topk(step.probes, dim=1, sorted=False).indices          # [N, P]
    used = None
    if n == 1:                               # the union is the position's own clusters
        union = top.view(-1).sort().values
    else:
        used = step.buffer("used", (step.num_clusters,), torch.int32).zero_()
        used.index_fill_(0, top.flatten(), 1)
        union = used.nonzero().squeeze(1)                                # [U] ascending
    utok = step.block_ids[union].flatten()                               # [U*cs]
    if isinstance(step.weight, Q8Rows):      # GGUF Q8_0 rows, read in place by the native kernel
        return (scores, *_q8_stage2(step, h, top, used, union, utok))
    src = step.weight if step.arranged is None else step.arranged
    if src.dtype in native.ROW_DTYPES and _native():   # other dtypes (fp16): torch's ops below
        return (scores, *_native_stage2(step, h, top, used, union, utok))
    if step.arranged is None:                # the model's rows: = utok, except on a shard (shard.py)
        urow = step.block_rows[union].flatten()
    else:                                    # cluster order: the union's clusters are runs of rows
        urow = _runs(union, cs)
    per = max(1, CHUNK_ROWS // cs)                                       # clusters per chunk
    chunks = -(-union.numel() // per)
    z = step.buffer("z", (chunks, n, per * cs), torch.float32)         # logits of the union
    rows = step.buffer("rows", (per * cs, step.hidden), src.dtype)
    rows32 = rows if rows.dtype == torch.float32 else step.buffer("rows32", rows.shape, torch.float32)
    wide = step.buffer("wide", (per * cs, n), torch.float32) if n >= WIDE_BATCH else None
    hf = h.float()
    for j in range(chunks):
        t = urow[j * per * cs:(j + 1) * per * cs]
        r = torch.index_select(src, 0, t, out=rows[: t.numel()])
        r = rows32[: t.numel()].copy_(r) if r.dtype != torch.float32 else r   # fp32 products
        if wide is None:
            torch.mm(hf, r.t(), out=z[j, :, : t.numel()])
        else:
            z[j, :, : t.numel()].copy_(torch.mm(r, hf.t(), out=wide[: t.numel()]).t())
    if n == 1:
        zu = step.masked(z.view(1, -1)[:, : utok.numel()], union)
        return (scores, *step.with_exact(h, utok.unsqueeze(0), zu))
    mine = step.masked(_own(z.view(chunks, n, per, cs), used, top, per), top)
    return (scores, *step.with_exact(h, step.block_ids[top].flatten(1), mine))  # [N, P*cs(+F)]


def _runs(clusters: torch.Tensor, cs: int) -> torch.Tensor:
    """Rows of `clusters` [U] in a cluster-ordered table (cluster k: rows k*cs ... k*cs+cs-1) [U*cs]."""
    return (clusters.unsqueeze(1) * cs + torch.arange(cs, device=clusters.device)).flatten()


def _own(z: torch.Tensor, used: torch.Tensor, top: torch.Tensor, per: int | None = None) -> torch.Tensor:
    """Each position's logits of its own probed clusters [N, P*cs], read off the logits of the
    union of the step's clusters (ascending; `used` [K] marks them): z [N, U, cs], or
    [chunks, N, per, cs] when the union was multiplied `per` clusters at a time."""
    slot = torch.cumsum(used, 0)[top] - 1                                # [N, P] place in the union
    rows = torch.arange(top.shape[0]).unsqueeze(1)
    return (z[rows, slot] if per is None else z[slot // per, rows, slot % per]).flatten(1)


def _native() -> bool:
    """Whether the native kernels (native.py: stage 2 on bf16 or fp32 rows, int8 stage 1) are
    here: compiled on first use; without a C compiler the step runs torch's ops instead (stage 2
    copies the rows to fp32: the same logits up to the order of the sums, slower), said once."""
    global _NATIVE
    if _NATIVE is None:
        try:
            native.library()
            _NATIVE = True
        except FlashHeadError as e:
            logging.getLogger("flashhead").warning("%s; the CPU kernel runs torch's ops instead (slower, "
                                                   "and a position's logits may then differ in the last "
                                                   "bits with the size of its batch)", e)
            _NATIVE = False
    return _NATIVE


_NATIVE = None


def _native_stage2(step, h, top, used, union, utok):
    """Stage 2 on bf16 or fp32 rows read in place (rows.c): bf16 widened to fp32 inside the
    product, so the logits are fp32 products as in TORCH (timings against a copy to fp32:
    docs/KERNELS.md, benchmarks/bf16_stage2.py); the always-exact tokens by the same kernel. Every
    sum runs in an order that does not depend on the batch, so a position's logits are the same bit
    for bit alone or among others (stage 1 too: i8_stage1.c)."""
    n, cs, threads = h.shape[0], step.cluster_size, torch.get_num_threads()
    out = step.buffer("native_z", (n, union.numel() * cs), torch.float32)
    if step.arranged is None:                # the model's rows, scattered: one id per row
        z = native.rows_dot(step.weight, step.block_rows[union].flatten(), h, threads, out=out)
    else:                                    # cluster order: one run of cs rows per cluster
        z = native.rows_dot(step.arranged, union, h, threads, out=out, run=cs)
    f = step.exact_ids.numel()
    exact = native.rows_dot(step.exact_rows, _FIRST, h, threads, run=f) if f else None
    if n == 1:
        return step.with_exact(h, utok.unsqueeze(0), step.masked(z, union), exact)
    mine = step.masked(_own(z.view(n, -1, cs), used, top), top)
    return step.with_exact(h, step.block_ids[top].flatten(1), mine, exact)


def _q8_stage2(step, h, top, used, union, utok):
    """Stage 2 on Q8_0 rows (q8rows.py): the union's rows and the always-exact tokens in one
    native call, products computed as llama.cpp computes its dense logits."""
    n, cs = h.shape[0], step.cluster_size
    w = step.weight
    if w.row_of is None:                     # the file's order: rows by token id
        ids = torch.cat([utok, step.exact_ids]) if step.exact_ids.numel() else utok
    else:                                    # cluster order: the union's clusters are runs of rows
        ids = _runs(union, cs)
        ids = torch.cat([ids, w.row_of[step.exact_ids]]) if step.exact_ids.numel() else ids
    z = w.dot(ids, h, rows=w.row_of is not None)                         # [N, U*cs + F]
    if n == 1:
        tok = torch.cat([utok, step.exact_ids]) if step.exact_ids.numel() else utok
        return tok.unsqueeze(0), z
    mine = _own(z[:, : utok.numel()].view(n, -1, cs), used, top)
    return (torch.cat([step.block_ids[top].flatten(1), step.exact_ids.expand(n, -1)], 1),
            torch.cat([mine, z[:, utok.numel():]], 1))


def _q8_fused(step) -> bool:
    """Q8_0 rows with an int8 stage 1: the whole step in one native call (q8_0.c fh_q8_step)."""
    return isinstance(step.weight, Q8Rows) and step.stage1.bits == 8 and step.hidden % 32 == 0


def _q8_step(step, h: torch.Tensor, want_greedy: bool):
    w, st, n = step.weight, step.stage1, h.shape[0]
    k, p, cs, f = step.num_clusters, step.probes, step.cluster_size, step.exact_ids.numel()
    h = h.float().contiguous()

    def alloc(name, shape, dtype):   # greedy returns only tokens: its scores and logits are reused
        return step.buffer(name, shape, dtype) if want_greedy else torch.empty(shape, dtype=dtype)

    scores = alloc("q8_scores", (n, k), torch.float32)
    top = alloc("q8_top", (n, p), torch.int64)
    z = alloc("q8_z", (n, p * cs + f), torch.float32)
    scratch = step.buffer("q8_scratch", (n, k), torch.int64)
    rows = step.buffer("q8_rows", (n, p * cs + f), torch.int64)
    slots = step.block_ids.reshape(-1)                                  # [K*cs] tokens by slot
    exact_rows = step.exact_ids if w.row_of is None else w.row_of[step.exact_ids]
    out = torch.empty(n, dtype=torch.int64) if want_greedy else None
    native.library().fh_q8_step(
        st.q.data_ptr(), st.scale.data_ptr(), k, p, w.blocks.data_ptr(), w.blocks.shape[1], cs,
        None if w.row_of is not None else slots.data_ptr(), exact_rows.data_ptr(), f, h.data_ptr(), n,
        step.hidden, scores.data_ptr(), top.data_ptr(), z.data_ptr(), scratch.data_ptr(), rows.data_ptr(), w.threads,
        slots.data_ptr(), step.exact_ids.data_ptr(), None if out is None else out.data_ptr())
    if want_greedy:
        return out
    tok = torch.cat([step.block_ids[top].flatten(1), step.exact_ids.expand(n, -1)], 1)
    return scores, tok, z


def greedy(step, h: torch.Tensor) -> torch.Tensor:
    if _q8_fused(step):
        return _q8_step(step, h, True)
    return pick(*probe(step, h)[1:])


def logits(step, h: torch.Tensor) -> torch.Tensor:
    out = torch.empty(h.shape[0], step.vocab)                            # returned: caller owns it
    return step.fill_logits(h, *probe(step, h), out=out)
