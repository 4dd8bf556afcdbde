"""Triton kernels for the FlashHead step on CUDA. Imported only when the TRITON path runs.

Four launches per step, none with a data-dependent shape, no host sync (CUDA-graph safe):
    stage1   s = h @ C.T                  [N, K] fp32 (C bf16/fp16/fp32, or int8 with row scales)
    topk     exact top-P per row          top [N, P] int32 (ascending cluster id), slot [N, K]
                                          int32 (probe slot of each cluster, -1 if not probed);
                                          resets best [N]
    stage2   z = h . W[block_ids[top]]    [N, P*cs] fp32, gathered rows of the model's own W;
                                          best [N] int64 = max over (logit, token) packed
    logits   [N, V] = z where probed, else min(s_k + offset_v, cap)   (forward only; estimate.py)
Greedy ids are the low 32 bits of `best`: argmax of the exact logits, fused into stage 2.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch configurations of the decode step (triton_path.py), from `benchmarks/kernels_gpu.py
# --sweep` on an H200 (docs/KERNELS.md), Llama shape, N=1: stage 1 over 96 configurations, best
# 12.4 µs (the earlier 32 x 128, 4 stages: 13.2); stage 2 with 1 cluster x 1024 columns per
# program and 4 warps 13.3 µs (512 columns 15.9, 2048 columns 16.5; pipeline stages 1-4 equal).
TUNED = {"stage1": dict(block_k=64, block_d=256, num_stages=4, num_warps=4),   # int8, N <= 16
         "stage2": dict(cpb=1, block_d=1024, num_warps=4),
         # N >= 8 rows: 512 columns and 2 warps per program, 78.8 µs at N=16 (1024 columns and
         # 4 warps: 88.4), 48.7 at N=8 (55.0); at N=1 it is 14.5 vs 13.4 µs
         # (docs/bench/kernels-gpu-h200-stage2-batch.log)
         "stage2_batch": dict(cpb=1, block_d=512, num_warps=2)}
# Top-P warps per block of clusters (lanes = K rounded up to a power of 2). Measured, Llama
# shape (8192 lanes), value bisection: 4/8/16 warps 16.1/14.6/14.8 µs (the earlier 32-round key
# bisection: 22.1/20.6/21.9); 16384 lanes (K = 9,496 / 16,384), key bisection: 8 warps 56.2/31.7,
# 16 warps 42.5/33.2, 32 warps 53.0/37.8.
TOPK_WARPS = {8192: 8, 16384: 16}


_INT64_MIN: tl.constexpr = tl.constexpr(-9223372036854775807 - 1)   # no (logit, token) yet


@triton.jit
def _order_key(x):
    # fp32 -> int32 with the same order (larger float, larger key)
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b < 0, b ^ 0x7FFFFFFF, b)


@triton.jit
def _stage1_kernel(H, C, SCALE, S, N, K, D, stride_h, stride_c, stride_s,
                   HAS_SCALE: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    rk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dm = (d0 + rd) < D
        x = tl.load(H + rn[:, None] * stride_h + (d0 + rd)[None, :],
                    mask=(rn[:, None] < N) & dm[None, :], other=0.0)
        c = tl.load(C + rk[:, None].to(tl.int64) * stride_c + (d0 + rd)[None, :],
                    mask=(rk[:, None] < K) & dm[None, :], other=0).to(x.dtype)
        if IEEE:
            acc += tl.dot(x, tl.trans(c), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(c))
    if HAS_SCALE:
        acc *= tl.load(SCALE + rk, mask=rk < K, other=0.0)[None, :]
    tl.store(S + rn[:, None] * stride_s + rk[None, :], acc, mask=(rn[:, None] < N) & (rk[None, :] < K))


@triton.jit
def _key_value(k):
    # inverse of _order_key: int32 key -> the fp32 value it orders
    return tl.where(k < 0, k ^ 0x7FFFFFFF, k).to(tl.float32, bitcast=True)


@triton.jit
def _topk_kernel(S, TOP, SLOT, BEST, K, P, stride_s, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < K
    key = _order_key(tl.load(S + n * stride_s + offs, mask=m, other=0.0))
    key = tl.where(m, key, -2147483648)
    # t = the P-th largest key (the largest t with count(key >= t) >= P), by bisection between
    # the row's min and max with pivots at the midpoint in value space, stopping as soon as
    # exactly P keys lie at or above the pivot: fewer block-wide counts than 32 rounds over all
    # 2^32 keys (14.8 vs 20.6 µs, Llama shape, docs/KERNELS.md). Invariants:
    # count(key >= lo) >= P > count(key > hi); each pivot lies in [lo + 1, hi], so the bracket
    # shrinks every round.
    lo = tl.min(tl.where(m, key, 2147483647), 0)
    hi = tl.max(key, 0)
    while lo < hi:
        vlo = _key_value(lo)
        mid = _order_key(vlo + (_key_value(hi) - vlo) * 0.5)
        mid = tl.minimum(tl.maximum(mid, lo + 1), hi)
        c = tl.sum((key >= mid).to(tl.int32), 0)
        take = c >= P
        lo = tl.where(take, mid, lo)
        hi = tl.where(take, tl.where(c == P, mid, hi), mid - 1)
    t = lo
    gt = (key > t) & m
    eq = (key == t) & m
    n_gt = tl.sum(gt.to(tl.int32), 0)
    pos_eq = n_gt + tl.cumsum(eq.to(tl.int32), 0) - 1           # ties: lowest cluster ids first
    sel = gt | (eq & (pos_eq < P))
    pos = tl.where(gt, tl.cumsum(gt.to(tl.int32), 0) - 1, pos_eq)
    tl.store(TOP + n * P + pos, offs, mask=sel)
    tl.store(SLOT + n * K + offs, tl.where(sel, pos, -1), mask=m)
    tl.store(BEST + n, tl.full((), _INT64_MIN, tl.int64))


@triton.jit
def _stage2_kernel(H, W, IDS, TOP, Z, BEST, P, D, stride_h, stride_w,
                   CS: tl.constexpr, CPB: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0)
    R: tl.constexpr = CPB * CS
    r = tl.arange(0, R)
    slot = tl.program_id(1) * CPB + r // CS                      # probe slot of each row
    rm = slot < P
    cl = tl.load(TOP + n * P + slot, mask=rm, other=0)
    tok = tl.load(IDS + cl * CS + r % CS, mask=rm, other=0)       # [R] token ids
    wrow = W + tok.to(tl.int64)[:, None] * stride_w
    rd = tl.arange(0, BLOCK_D)
    acc = tl.zeros((R, BLOCK_D), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dm = (d0 + rd) < D
        x = tl.load(H + n * stride_h + d0 + rd, mask=dm, other=0.0).to(tl.float32)
        w = tl.load(wrow + (d0 + rd)[None, :], mask=rm[:, None] & dm[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    z = tl.sum(acc, 1)                                           # [R] exact logits
    tl.store(Z + n * P * CS + slot * CS + r % CS, z, mask=rm)
    packed = (_order_key(z).to(tl.int64) << 32) | tok.to(tl.int64)
    packed = tl.where(rm, packed, _INT64_MIN)
    tl.atomic_max(BEST + n, tl.max(packed, 0))


@triton.jit
def _logits_kernel(S, OFF, CAP, SLOT, Z, ASSIGN, WITHIN, OUT, V, K, P,
                   CS: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    v = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = v < V
    c = tl.load(ASSIGN + v, mask=m, other=0)
    s = tl.load(SLOT + n * K + c, mask=m, other=-1)
    est = tl.load(S + n * K + c, mask=m, other=0.0) + tl.load(OFF + v, mask=m, other=0.0)
    est = tl.minimum(est, tl.load(CAP + n))
    exact = tl.load(Z + n * P * CS + s * CS + tl.load(WITHIN + v, mask=m, other=0), mask=m & (s >= 0), other=0.0)
    tl.store(OUT + n.to(tl.int64) * V + v, tl.where(s >= 0, exact, est), mask=m)


# ---- launch wrappers (shapes in comments; all outputs allocated here, graph-safe) -------------

def stage1(h: torch.Tensor, c: torch.Tensor, scale: torch.Tensor | None, block_k: int | None = None,
           block_d: int = 128, num_stages: int = 4, num_warps: int = 4) -> torch.Tensor:
    """h [N, d], c [K, d] (float or int8), scale [K] fp32 or None -> scores [N, K] fp32."""
    n, d = h.shape
    k = c.shape[0]
    if c.dtype.is_floating_point and c.dtype != h.dtype:
        h = h.to(c.dtype)
    h = h.contiguous()
    s = torch.empty(n, k, device=h.device, dtype=torch.float32)
    block_n = max(16, min(64, triton.next_power_of_2(n)))
    block_k = block_k or (32 if n <= 16 else 64)
    grid = (triton.cdiv(k, block_k), triton.cdiv(n, block_n))
    _stage1_kernel[grid](h, c, scale if scale is not None else s, s, n, k, d, h.stride(0), c.stride(0),
                         s.stride(0), HAS_SCALE=scale is not None, IEEE=h.dtype == torch.float32,
                         BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=num_warps, num_stages=num_stages)
    return s


def topk(scores: torch.Tensor, p: int, num_warps: int | None = None):
    """scores [N, K] fp32 -> top [N, P] int32, slot [N, K] int32, best [N] int64 (reset)."""
    n, k = scores.shape
    block = triton.next_power_of_2(k)
    num_warps = num_warps or TOPK_WARPS.get(block, 16)
    top = torch.empty(n, p, device=scores.device, dtype=torch.int32)
    slot = torch.empty(n, k, device=scores.device, dtype=torch.int32)
    best = torch.empty(n, device=scores.device, dtype=torch.int64)
    _topk_kernel[(n,)](scores, top, slot, best, k, p, scores.stride(0), BLOCK=block,
                       num_warps=num_warps)
    return top, slot, best


def stage2(h: torch.Tensor, weight: torch.Tensor, block_ids: torch.Tensor, top: torch.Tensor,
           best: torch.Tensor, cpb: int = 1, block_d: int = 512, num_warps: int = 4,
           num_stages: int = 3) -> torch.Tensor:
    """h [N, d], weight [V, d], block_ids [K, cs] int32, top [N, P] -> z [N, P*cs] fp32; best updated."""
    n, p = top.shape
    cs = block_ids.shape[1]
    d = weight.shape[1]
    h = h.contiguous()
    z = torch.empty(n, p * cs, device=h.device, dtype=torch.float32)
    grid = (n, triton.cdiv(p, cpb))
    _stage2_kernel[grid](h, weight, block_ids, top, z, best, p, d, h.stride(0), weight.stride(0),
                         CS=cs, CPB=cpb, BLOCK_D=min(block_d, triton.next_power_of_2(d)), num_warps=num_warps,
                         num_stages=num_stages)
    return z


def logits(scores: torch.Tensor, offsets: torch.Tensor, cap: torch.Tensor, slot: torch.Tensor, z: torch.Tensor,
           assignments: torch.Tensor, within: torch.Tensor, cs: int) -> torch.Tensor:
    """scores [N, K] fp32, offsets [V] fp32, cap [N] fp32, slot [N, K], z [N, P*cs],
    assignments/within [V] int32 -> logits [N, V] fp32."""
    n, k = scores.shape
    v = assignments.numel()
    out = torch.empty(n, v, device=scores.device, dtype=torch.float32)
    block = 1024
    _logits_kernel[(n, triton.cdiv(v, block))](scores.contiguous(), offsets, cap.contiguous(), slot, z,
                                               assignments, within, out, v, k, z.shape[1] // cs, CS=cs,
                                               BLOCK=block, num_warps=4)
    return out
