"""TRITON kernel: the step on CUDA through the fused kernels of triton_kernels.py (imported lazily).
Stage 2 reads a tensor head's rows in place (`step.rows.weight`)."""
from __future__ import annotations

import torch


def _tk():
    from . import triton_kernels
    return triton_kernels


def _packed(z: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """(logit, token) -> int64 keys ordered as the logits (triton_kernels._order_key, high 32 bits)."""
    b = z.contiguous().view(torch.int32)
    key = torch.where(b < 0, b ^ 0x7FFFFFFF, b).to(torch.int64)
    return (key << 32) | tok.to(torch.int64)


class TritonKernel:
    def stage1(self, step, h: torch.Tensor) -> torch.Tensor:
        st, tk = step.stage1, _tk()
        if st.bits == 4:
            return st(h)  # int4: dequantizing reference (no fused int4 kernel yet)
        c, scale = (st.centroids, None) if st.bits is None else (st.q, st.scale)
        # the tuned launch was swept for int8 tables at decode sizes; its shared memory (4 stages of
        # 64 x 256 elements) does not fit wider centroid dtypes
        tuned = st.bits == 8 and h.shape[0] <= 16
        return tk.stage1(h, c, scale, **(tk.TUNED["stage1"] if tuned else {}))

    def _run(self, step, h: torch.Tensor, context=None):
        tk = _tk()
        scores = self.stage1(step, h)                                      # [N, K] fp32
        top, slot, best = tk.topk(step.rank(scores, context), step.probes)  # [N, P], [N, K], [N]
        launch = tk.TUNED["stage2" if h.shape[0] < 8 else "stage2_batch"]
        z = tk.stage2(h, step.rows.weight, step.block_ids32, top, best, **launch)  # [N, P*cs]
        zx = None
        if step.exact_ids.numel():                                         # always-exact tokens
            zx = h.float() @ step.exact_rows.float().T                        # [N, F]
            best = torch.maximum(best, _packed(zx, step.exact_ids.expand_as(zx)).amax(1))
        return scores, top, slot, best, z, zx

    def probe(self, step, h: torch.Tensor, context=None):
        scores, top, _, _, z, _ = self._run(step, h, context)
        return (scores, *step.with_exact(h, step.block_ids[top].flatten(1), z))

    def greedy(self, step, h: torch.Tensor, context=None) -> torch.Tensor:
        best = self._run(step, h, context)[3]
        return best & 0xFFFFFFFF                                           # token id: low 32 bits

    def logits(self, step, h: torch.Tensor, context=None) -> torch.Tensor:
        scores, _, slot, _, z, zx = self._run(step, h, context)
        best = z.amax(1) if zx is None else torch.maximum(z.amax(1), zx.amax(1))   # [N] best exact logit
        cap = torch.nextafter(best, torch.full_like(best, float("-inf")))  # estimates stay below it
        out = _tk().logits(step.cluster_logits(h, scores), step.offsets, cap, slot, z, step.assignments32,
                           step.within32, step.cluster_size)
        if zx is not None:
            out.scatter_(1, step.exact_ids.expand(out.shape[0], -1), zx)
        return out


TRITON = TritonKernel()
