"""Serving under load: `vllm serve` (OpenAI API, loopback) with a mix of concurrent requests.

    python benchmarks/vllm_load.py [--model smollm2-135m] [--dir DIR] [--requests 64] [--tp 2]

For the dense base model, FlashHead with the dense rule off (FlashHead on every step) and FlashHead
with the default rule: starts the server, sends --requests requests at once (the mix of
src/flashhead/tools/vllm_load.py, which tests/test_vllm_serve.py runs in CI), checks every answer
against the API and prints p50/p95 latency, completion tokens/s and the head's step counts (from the
server log) as a Markdown table.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from flashhead.tools.vllm_load import KINDS, load, long_prompt_ids, one, serve, steps, stop, wait_ready


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dir", help="an existing FlashHead directory (default: build one in a temp dir)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (CPU: one core per rank)")
    a = p.parse_args()
    from flashhead.build import build
    from flashhead.build.sources import resolve

    base = resolve(a.model)
    fh = Path(a.dir) if a.dir else build(base, Path(tempfile.mkdtemp()) / "fh", progress=False)
    ids = long_prompt_ids(base)
    tp_args, tp_env = [], {}
    if a.tp > 1:
        tp_args = ["--tensor-parallel-size", str(a.tp)]
        tp_env = {"VLLM_CPU_OMP_THREADS_BIND": "|".join(str(i) for i in range(a.tp))}
    rows = []
    for name, model_dir, env in [("dense", base, {}), ("FlashHead, rule off", fh, {"FLASHHEAD_DENSE_RULE": "0"}),
                                 ("FlashHead, default rule", fh, {})]:
        with tempfile.TemporaryDirectory() as tmp:
            log_path = Path(tmp) / "serve.log"
            with open(log_path, "w") as log:
                proc, port = serve(model_dir, log, {**env, **tp_env}, tp_args)
                try:
                    assert wait_ready(proc, port), log_path.read_text()[-3000:]
                    one(port, str(model_dir), 0, ids)                  # warm up
                    s = load(port, str(model_dir), a.requests, ids)
                finally:
                    stop(proc)
            rows.append((name, s, steps(log_path.read_text())))
    print(f"\n{a.model}, TP {a.tp}, {a.requests} concurrent requests (mix: {', '.join(KINDS)})\n")
    print("| server | p50 latency (s) | p95 latency (s) | completion tokens/s | FlashHead / dense steps |")
    print("|---|---:|---:|---:|---|")
    for name, s, st in rows:
        print(f"| {name} | {s['p50_s']:.2f} | {s['p95_s']:.2f} | {s['tokens_per_s']:.1f} | {st} |")


if __name__ == "__main__":
    main()
