"""CPU kernel: the reference step with int8 stage 1 through torch's packed kernel, stage 2 over
the batch's union of probed clusters in cache-sized chunks, preallocated workspaces, `out=`.

Positions of a batch probe many of the same clusters (Gemma-3-270M, P=509, real text: 4 random
positions probe 1,240 distinct clusters, not 2,036; 16 probe 2,359, not 8,144; 64 probe 3,826 of
16,384), so stage 2 gathers each probed block once and multiplies it by all N hidden states.

Measured on the 2-core AVX-512 machine (Gemma-3-270M head, fp32): a fresh gather buffer of
P*cs rows per step costs page faults once it passes glibc's 32 MB mmap threshold (P=1024:
39 ms for the gather vs 7.7 ms into a reused buffer), so the buffers live on the head and grow
to the largest step seen. Results equal TORCH (same ops; bf16 stage-1 scores for int8, see stage1).
"""
from __future__ import annotations

import torch

_INT8_MM = getattr(torch, "_weight_int8pack_mm", None)
# Gathered rows per stage-2 chunk. Measured (Gemma-3-270M head, 8,144 rows, 2 threads, cold):
# one gather + one product 4.7 ms; chunks of 128 / 256 / 512 / 1024 rows 4.3 / 3.7 / 3.4 / 3.4 ms.
CHUNK_ROWS = 1024
# From this many positions on, `rows @ h.T` beats `h @ rows.T` (1,024 rows x 640, 2 threads, warm:
# N=4 388 vs 132 us, N=8 390 vs 140 us, N=16 166 vs 223 us, N=64 468 vs 611 us).
WIDE_BATCH = 16


def _buffer(head, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    numel = 1
    for s in shape:
        numel *= s
    buf = head._workspace.get((name, dtype))
    if buf is None or buf.numel() < numel or buf.device != head.weight.device:
        buf = torch.empty(numel, dtype=dtype, device=head.weight.device)
        head._workspace[(name, dtype)] = buf
    return buf[:numel].view(shape)


def stage1(head, h: torch.Tensor) -> torch.Tensor:
    """Cluster scores [N, K] fp32. int8 centroids go through torch's packed weight-only int8
    kernel (`_weight_int8pack_mm`, bf16 activations and output: 0.33 vs 3.98 ms for fp32
    centroids, Gemma-3-270M, batch 1); its bf16 rounding left the dense top-1 recall unchanged
    on held-out text (docs/KERNELS.md)."""
    st = head.stage1
    if st.bits == 8 and _INT8_MM is not None:
        return _INT8_MM(h.to(torch.bfloat16), st.q, st.scale_bf16).float()
    return st(h)


def probe(head, h: torch.Tensor):
    """Stage 2 over the union of the positions' probed clusters: each cluster block is gathered
    once per step however many positions probed it, in chunks of CHUNK_ROWS rows multiplied by all
    N hidden states while still in the cache. Each position then reads its own clusters' logits, so
    the result is TORCH's (a position's logits do not depend on the rest of its batch)."""
    n, cs = h.shape[0], head.cluster_size
    scores = stage1(head, h)                                             # [N, K]
    top = scores.topk(head.probes, dim=1, sorted=False).indices          # [N, P]
    if n == 1:                               # the union is the position's own clusters
        union = top.view(-1).sort().values
    else:
        used = _buffer(head, "used", (head.num_clusters,), torch.int32).zero_()
        used.index_fill_(0, top.flatten(), 1)
        union = used.nonzero().squeeze(1)                                # [U] ascending
    utok = head.block_ids[union].flatten()                               # [U*cs]
    per = max(1, CHUNK_ROWS // cs)                                       # clusters per chunk
    chunks = -(-union.numel() // per)
    z = _buffer(head, "z", (chunks, n, per * cs), torch.float32)         # logits of the union
    rows = _buffer(head, "rows", (per * cs, head.hidden), head.weight.dtype)
    rows32 = rows if rows.dtype == torch.float32 else _buffer(head, "rows32", rows.shape, torch.float32)
    wide = _buffer(head, "wide", (per * cs, n), torch.float32) if n >= WIDE_BATCH else None
    hf = h.float()
    for j in range(chunks):
        t = utok[j * per * cs:(j + 1) * per * cs]
        r = torch.index_select(head.weight, 0, t, out=rows[: t.numel()])
        r = rows32[: t.numel()].copy_(r) if r.dtype != torch.float32 else r   # fp32 products
        if wide is None:
            torch.mm(hf, r.t(), out=z[j, :, : t.numel()])
        else:
            z[j, :, : t.numel()].copy_(torch.mm(r, hf.t(), out=wide[: t.numel()]).t())
    if n == 1:
        return (scores, *head.with_exact(h, utok.unsqueeze(0), z.view(1, -1)[:, : utok.numel()]))
    slot = torch.cumsum(used, 0)[top] - 1                                # [N, P] place in the union
    mine = z.view(chunks, n, per, cs)[slot // per, torch.arange(n).unsqueeze(1), slot % per]
    return (scores, *head.with_exact(h, head.block_ids[top].flatten(1), mine.flatten(1)))  # [N, P*cs(+F)]


def greedy(head, h: torch.Tensor) -> torch.Tensor:
    _, tok, z = probe(head, h)
    return tok.gather(1, z.argmax(1, keepdim=True)).squeeze(1)


def logits(head, h: torch.Tensor) -> torch.Tensor:
    out = torch.empty(h.shape[0], head.vocab)                            # returned: caller owns it
    return head.fill_logits(*probe(head, h), out=out)
