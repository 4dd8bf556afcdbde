"""Where a transformers decode step goes: the head timed inside `generate`, step by step, dense and
FlashHead alternating in one process, so that the body's time (step - head) of the two is compared
under the same machine conditions.

    python benchmarks/decode_split.py DIR [--dtype bfloat16] [--tokens 48] [--repeats 4] [--json OUT]

Per side and run: step = wall time of `generate` / new tokens (greedy, `min_new_tokens` = tokens);
head = mean time of the lm_head's calls after the prompt's; body = step - head. The Amdahl table
(benchmarks/amdahl.py) takes the head cold and alone and the step from separate runs; this script
answers whether a shortfall there is the body's (the same with either head: noise between runs) or
FlashHead's (a slower body, or a head slower in the loop than alone).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    from flashhead.tools.bench import machine
    from flashhead.integrations.hf import load

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=4, help="timed runs per side (after one warm-up each)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(2)
    model, tok = load(a.dir, dtype=getattr(torch, a.dtype))
    lm, calls = model.lm_head, []
    forward = lm.forward

    def timed(h):
        t = time.perf_counter()
        out = forward(h)
        calls.append(time.perf_counter() - t)
        return out

    lm.forward = timed
    enc = tok("The old lighthouse keeper climbed the stairs every evening and", return_tensors="pt")
    kw = dict(max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False, temperature=None, top_p=None,
              top_k=None, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    runs = {"dense": [], "flashhead": []}
    with torch.inference_mode():
        for rep in range(a.repeats + 1):
            for side in runs:
                lm.use_flashhead = side == "flashhead"
                calls.clear()
                t = time.perf_counter()
                model.generate(**enc, **kw)
                step = (time.perf_counter() - t) / a.tokens * 1e3
                head = statistics.mean(calls[1:]) * 1e3          # the decode steps' calls
                if rep:                                          # the first run of each side warms up
                    runs[side].append({"step_ms": step, "head_ms": head, "body_ms": step - head})
    out = {"dir": a.dir, "dtype": a.dtype, "tokens": a.tokens, "machine": machine(), "runs": runs}
    for side, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("step_ms", "head_ms", "body_ms")}
        out[side] = med
        print(f"{side:>10}: step {med['step_ms']:.1f} ms = head {med['head_ms']:.2f} + body {med['body_ms']:.1f} "
              f"(runs: {', '.join(format(r['step_ms'], '.1f') for r in rs)})")
    d, f = out["dense"], out["flashhead"]
    out["speedup"] = d["step_ms"] / f["step_ms"]
    out["allowed"] = d["step_ms"] / (d["body_ms"] + f["head_ms"])
    print(f"speedup {out['speedup']:.2f}x; allowed by the heads in the loop {out['allowed']:.2f}x; body "
          f"FlashHead / dense {f['body_ms'] / d['body_ms']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
