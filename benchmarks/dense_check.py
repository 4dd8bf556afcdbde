"""The cost of verified decoding's check per position: flashhead's dense head on Q8_0 rows
(`Q8Rows.dense_argmax`, q8_0.c: each row read once for all K states) against llama.cpp's own dense
head over K positions in one batch (one llama_decode of K tokens with logits for all K, minus the
same decode with none, where llama.cpp skips its output projection), side by side in one process.

    python benchmarks/dense_check.py gemma-3-270m --json docs/bench/dense-check-gemma-3-270m.json

Median of `--repeats` runs; real hidden states (the bench prompt's continuation through the body).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from flashhead.backends import Entry
from flashhead.backends.llamacpp import LlamaCppBackend
from flashhead.tools.bench import PROMPT, machine
from flashhead.build.sources import gguf_of


def median_seconds(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a model alias or GGUF file (gemma-3-270m, smollm2-135m)")
    ap.add_argument("--positions", default="1,2,4,8,16,32")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    b = LlamaCppBackend(gguf_of(None, args.model), n_ctx=512, max_sequences=1)
    w = b.head_weight()
    ids = b.tokenize(PROMPT + " looked out over the water. The sea was calm that night, and the light "
                     "turned slowly over the rocks where, years before, a ship had gone down in a storm "
                     "that nobody in the village had forgotten.")
    H = b.hidden_states(ids)
    rows = []
    for k in (int(x) for x in args.positions.split(",")):
        h = H[-k:].clone()
        ours = median_seconds(lambda: w.dense_argmax(h), args.repeats)
        ours_logits = median_seconds(lambda: w.dense(h), args.repeats)
        tail = ids[-k:]
        start = len(ids) - k

        def decode(all_logits: bool):   # logits for all K positions, or none (the body alone)
            b.cut(0, start)
            b.decode([Entry(t, start + j, 0, all_logits) for j, t in enumerate(tail)], logits=True)
        b.reset()
        b.decode([Entry(t, p, 0, False) for p, t in enumerate(ids[:start])] or [Entry(ids[0], 0, 0, False)])
        llama_all = median_seconds(lambda: decode(True), args.repeats)
        llama_body = median_seconds(lambda: decode(False), args.repeats)
        assert torch.equal(w.dense_argmax(h), w.dense(h).argmax(1))
        rows.append({"positions": k, "flashhead_argmax_ms_per_position": 1e3 * ours / k,
                     "flashhead_logits_ms_per_position": 1e3 * ours_logits / k,
                     "llamacpp_head_ms_per_position": 1e3 * (llama_all - llama_body) / k})
        print(rows[-1], flush=True)
    out = {"gguf": str(b.path), "machine": machine(), "threads": b.threads,
           "vocab": b.vocab, "hidden": b.hidden, "repeats": args.repeats, "rows": rows}
    b.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
