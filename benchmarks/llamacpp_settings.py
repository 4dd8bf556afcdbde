"""llama.cpp's own dense decode with its CPU defaults (unified cache, flash attention auto, weights
repacked for its batched kernels) against the settings flashhead's llama.cpp backend uses (a cache
per sequence, weights as stored: the settings under which a sequence's hidden states do not depend
on its batch, backends/llamacpp.py), side by side in one process: what those settings cost.

    python benchmarks/llamacpp_settings.py gemma-3-270m --json docs/bench/llamacpp-settings-gemma-3-270m.json

Greedy, the bench prompt (flashhead.tools.bench.PROMPT), batch 1 and 4, median decode tokens/s of
alternating runs. Also reports whether a prompt's greedy tokens alone equal its tokens in a batch
of 4 different prompts, under each setting.
"""
from __future__ import annotations

import argparse
import json
import statistics

from flashhead.backends.llamacpp import LlamaCppBackend
from flashhead.tools.bench import PROMPT, domain_prompt, machine
from flashhead.build.sources import gguf_of
from flashhead.tools.generate import generate

SETTINGS = {
    "llama.cpp's defaults (unified cache, flash attention auto, weights repacked)":
        dict(unified=True, flash_attn=-1, repack=True),
    "a cache per sequence (flash attention auto, weights repacked)": dict(unified=False, flash_attn=-1, repack=True),
    "flashhead's backend (a cache per sequence, flash attention auto, weights as stored)":
        dict(unified=False, flash_attn=-1, repack=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a model alias or GGUF file (gemma-3-270m, smollm2-135m)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    gguf = gguf_of(None, args.model)
    backends = {name: LlamaCppBackend(gguf, n_ctx=1024, max_sequences=4, **kw) for name, kw in SETTINGS.items()}
    rows = []
    others = [domain_prompt(d, 16) for d in ("docs", "code", "german")]
    for name, b in backends.items():
        alone = generate(b, None, [PROMPT], 48, mode="dense", ignore_end=True)["token_ids"][0]
        batched = generate(b, None, [PROMPT] + others, 48, mode="dense", ignore_end=True)["token_ids"][0]
        rows.append({"setting": name, "same_tokens_alone_and_in_a_batch": alone == batched})
    for batch in (1, 4):
        runs = {name: [] for name in backends}
        for name, b in backends.items():
            generate(b, None, [PROMPT] * batch, 4, mode="dense", ignore_end=True)      # warm-up
        for _ in range(args.repeats):
            for name, b in backends.items():
                r = generate(b, None, [PROMPT] * batch, args.new_tokens, mode="dense", ignore_end=True)
                runs[name].append(r["decode_tokens_per_second"])
        for row in rows:
            row[f"dense_tok_s_batch{batch}"] = statistics.median(runs[row["setting"]])
    out = {"gguf": str(gguf), "machine": machine(),
           "threads": next(iter(backends.values())).threads, "new_tokens": args.new_tokens,
           "repeats": args.repeats, "rows": rows}
    for b in backends.values():
        b.close()
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
