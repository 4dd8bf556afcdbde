"""CPU kernel: the reference step with int8 stage 1 through torch's packed kernel, stage 2 in
cache-sized chunks, preallocated workspaces and `out=` everywhere.

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
    """Stage 2 in chunks of about CHUNK_ROWS gathered rows: each chunk is copied into a small
    reused buffer and multiplied while it is still in the cache, so the rows cross memory once."""
    n, cs = h.shape[0], head.cluster_size
    scores = stage1(head, h)                                             # [N, K]
    top = scores.topk(head.probes, dim=1, sorted=False).indices          # [N, P]
    tok = head.block_ids[top].flatten(1)                                 # [N, P*cs]
    m = tok.shape[1]
    c = min(m, max(cs, CHUNK_ROWS // n))                                 # rows per position per chunk
    rows = _buffer(head, "rows", (n * c, head.hidden), head.weight.dtype)
    z = _buffer(head, "z", (n, m), torch.float32)
    hf = h.float().unsqueeze(2)                                          # [N, d, 1]
    for s in range(0, m, c):
        e = min(s + c, m)
        r = rows[: n * (e - s)]
        torch.index_select(head.weight, 0, tok[:, s:e].flatten(), out=r)
        r = r.view(n, e - s, head.hidden)
        torch.bmm(r if r.dtype == torch.float32 else r.float(), hf, out=z[:, s:e].unsqueeze(2))
    return scores, tok, z


def greedy(head, h: torch.Tensor) -> torch.Tensor:
    _, tok, z = probe(head, h)
    return tok.gather(1, z.argmax(1, keepdim=True)).squeeze(1)


def logits(head, h: torch.Tensor) -> torch.Tensor:
    out = torch.empty(h.shape[0], head.vocab)                            # returned: caller owns it
    return head.fill_logits(*probe(head, h), out=out)
