"""Hidden states of a real model for the fidelity experiments, cached once per model.

    python benchmarks/fidelity_data.py [smollm2-135m gemma-3-270m] [--eval 8192 --cal 16384 --self 16384]

    eval_h, eval_y   teacher-forced on the held-out split of Debian's fortunes (corpus.load("eval"))
    cal_h,  cal_y    teacher-forced on the calibration split (corpus.load("calibration"))
    self_h, self_y   the model's own samples at T=1 from BOS (hidden.sampled: `flashhead build
                     --calibrate-on self`, no corpus needed)
    docs_h, docs_y   teacher-forced on Python's own documentation (pydoc_data.topics, shipped with
                     CPython; PSF license): a second domain for held-out evaluation
    head             the output head [V, d] fp32
written to ~/.cache/flashhead/fidelity/<model>.safetensors (or $FLASHHEAD_CACHE/fidelity/).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def out_path(model: str) -> Path:
    from flashhead.sources import cache_root
    return cache_root() / "fidelity" / f"{model}.safetensors"


def python_docs() -> list[str]:
    """Paragraphs (>= 80 characters) of the Python language reference shipped with CPython."""
    import re

    import pydoc_data.topics as topics

    return [p.strip() for k in sorted(topics.topics) for p in re.split(r"\n\s*\n", topics.topics[k])
            if len(p.strip()) >= 80]


def collect(model_name: str, a) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flashhead import corpus, hidden
    from flashhead.sources import resolve

    d = resolve(model_name)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    out = {"head": model.get_output_embeddings().weight.detach().float().contiguous()}
    for name, fn in (("eval", lambda: hidden.teacher_forced(model, tok, corpus.load("eval"), a.eval)),
                     ("cal", lambda: hidden.teacher_forced(model, tok, corpus.load("calibration"), a.cal)),
                     ("self", lambda: hidden.sampled(model, tok, a.self_)),
                     ("docs", lambda: hidden.teacher_forced(model, tok, python_docs(), a.docs))):
        t = time.time()
        out[f"{name}_h"], out[f"{name}_y"] = (x.contiguous() for x in fn())
        print(model_name, name, tuple(out[f"{name}_h"].shape), f"{time.time() - t:.0f} s", flush=True)
    path = out_path(model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    print("wrote", path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="*", default=["smollm2-135m", "gemma-3-270m"])
    p.add_argument("--eval", type=int, default=8192)
    p.add_argument("--cal", type=int, default=16384)
    p.add_argument("--self", dest="self_", type=int, default=16384)
    p.add_argument("--docs", type=int, default=16384)
    a = p.parse_args()
    torch.set_num_threads(2)
    for m in a.models:
        collect(m, a)


if __name__ == "__main__":
    main()
