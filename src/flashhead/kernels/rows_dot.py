"""Stage 2's product on a tensor's rows: z [N, R] = rows . h, by rows.c where the native kernels
are (bf16 or fp32 rows, read in place), else by torch's ops on chunks of gathered rows (copied to
fp32: the same logits up to the order of the sums, slower).
"""
from __future__ import annotations

import torch

from . import native

# torch's-ops stage 2 (no C compiler): gathered rows per chunk, and the batch from which
# `rows @ h.T` beats `h @ rows.T` (both measured: experiments/FINDINGS.md, "The CPU kernel").
CHUNK_ROWS = 1024
WIDE_BATCH = 16


def rows_dot(table: torch.Tensor, ids: torch.Tensor, h: torch.Tensor, buffer, cs: int, run: int = 1) -> torch.Tensor:
    """Exact logits z [N, R] fp32 of the rows `table[ids]` (run = 1), or of the runs of `run` rows
    `table[ids * run + j]` (R = ids.numel() * run), for h [N, d]. `cs`: rows per cluster (the
    chunks of the torch path hold whole clusters); `buffer(name, shape, dtype)`: the step's reused
    workspace (the result may be one of its buffers)."""
    n, r = h.shape[0], ids.numel() * run
    if table.dtype in native.ROW_DTYPES and native.available():   # other dtypes (fp16): torch's ops
        out = buffer("native_z", (n, r), torch.float32)
        return native.rows_dot(table, ids, h, torch.get_num_threads(), out=out, run=run)
    rows = ids if run == 1 else (ids.unsqueeze(1) * run + torch.arange(run, device=ids.device)).flatten()
    per = max(1, CHUNK_ROWS // cs)                                       # clusters per chunk
    chunks = -(-r // (per * cs))
    z = buffer("z", (chunks, n, per * cs), torch.float32)
    got = buffer("rows", (per * cs, table.shape[1]), table.dtype)
    rows32 = got if got.dtype == torch.float32 else buffer("rows32", got.shape, torch.float32)
    wide = buffer("wide", (per * cs, n), torch.float32) if n >= WIDE_BATCH else None
    hf = h.float()
    for j in range(chunks):
        t = rows[j * per * cs:(j + 1) * per * cs]
        g = torch.index_select(table, 0, t, out=got[: t.numel()])
        g = rows32[: t.numel()].copy_(g) if g.dtype != torch.float32 else g   # fp32 products
        if wide is None:
            torch.mm(hf, g.t(), out=z[j, :, : t.numel()])
        else:
            z[j, :, : t.numel()].copy_(torch.mm(g, hf.t(), out=wide[: t.numel()]).t())
    return z.permute(1, 0, 2).reshape(n, -1)[:, :r]                     # [N, R]
