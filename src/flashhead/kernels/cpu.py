"""CPU kernel: the reference step with preallocated workspaces and `out=` everywhere.

Measured on the 2-core AVX-512 machine (Gemma-3-270M head, fp32): a fresh gather buffer of
P*cs rows per step costs page faults once it passes glibc's 32 MB mmap threshold (P=1024:
39 ms for the gather vs 7.7 ms into a reused buffer), so the buffers live on the head and grow
to the largest step seen. Results equal TORCH (same ops, same order).
"""
from __future__ import annotations

import torch

_INT8_MM = getattr(torch, "_weight_int8pack_mm", None)


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
    n, cs = h.shape[0], head.cluster_size
    scores = stage1(head, h)                                             # [N, K]
    top = scores.topk(head.probes, dim=1, sorted=False).indices          # [N, P]
    tok = head.block_ids[top].flatten(1)                                 # [N, P*cs]
    m = tok.shape[1]
    rows = _buffer(head, "rows", (n * m, head.hidden), head.weight.dtype)
    torch.index_select(head.weight, 0, tok.flatten(), out=rows)
    rows = rows.view(n, m, head.hidden)
    if rows.dtype != torch.float32:
        rows = rows.float()
    z = torch.bmm(rows, h.float().unsqueeze(2), out=_buffer(head, "z", (n, m, 1), torch.float32))
    return scores, tok, z.view(n, m)


def greedy(head, h: torch.Tensor) -> torch.Tensor:
    _, tok, z = probe(head, h)
    return tok.gather(1, z.argmax(1, keepdim=True)).squeeze(1)


def logits(head, h: torch.Tensor) -> torch.Tensor:
    scores, tok, z = probe(head, h)
    est = head.unprobed_estimate(scores, z.amax(1, keepdim=True))        # [N, K]
    out = torch.empty(h.shape[0], head.vocab)                            # returned: caller owns it
    torch.index_select(est, 1, head.assignments, out=out)
    return out.scatter_(1, tok, z)
