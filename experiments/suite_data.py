"""Hidden states of a real model on every domain of the suite, cached once per model.

    python experiments/suite_data.py [smollm2-135m gemma-3-270m] [--eval 3072 --cal 4096 --self 16384]

For each domain of corpus.DOMAINS and the chat domain (corpus.py, chat.py): `<domain>/eval_h`,
`<domain>/eval_y` (held-out documents) and `<domain>/cal_h`, `<domain>/cal_y` (the calibration
documents), teacher-forced through the real model (fp32); `self/cal_h` the model's own samples
(hidden.sampled); `head` the output head [V, d]. Written to $FLASHHEAD_CACHE/suite/<model>.safetensors
(default ~/.cache/flashhead/suite/). The experiments (experiments/suite_lab.py) read only this file.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def out_path(model: str) -> Path:
    from flashhead.core.cache import cache_root
    return cache_root() / "suite" / f"{model}.safetensors"


def load(model: str) -> dict:
    """The cached tensors, copied into memory (a memory-mapped file pays a page fault per touch)."""
    from safetensors.torch import load_file
    return {k: v.clone() for k, v in load_file(str(out_path(model))).items()}


def collect(name: str, a) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flashhead.data import hidden
    from flashhead.tools.evaluate import suite_texts
    from flashhead.build.sources import resolve

    path = out_path(name)
    out = load_file(str(path)) if path.is_file() else {}
    d = resolve(name)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    out["head"] = model.get_output_embeddings().weight.detach().float().contiguous()
    for domain in a.domains:
        for split, n in (("eval", a.eval), ("calibration", a.cal)):
            key = f"{domain}/{'eval' if split == 'eval' else 'cal'}"
            if f"{key}_h" in out:
                continue
            t = time.time()
            h, y = hidden.teacher_forced(model, tok, suite_texts(model, tok, domain, split), n)
            out[f"{key}_h"], out[f"{key}_y"] = h.contiguous(), y.contiguous()
            print(name, key, tuple(h.shape), f"{time.time() - t:.0f} s", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(out, str(path))
    if "self/cal_h" not in out and a.self_:
        t = time.time()
        h, y = hidden.sampled(model, tok, a.self_)
        out["self/cal_h"], out["self/cal_y"] = h.contiguous(), y.contiguous()
        print(name, "self", tuple(h.shape), f"{time.time() - t:.0f} s", flush=True)
    save_file(out, str(path))
    print("wrote", path)


def main():
    from flashhead.data.corpus import DOMAINS

    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="*", default=["smollm2-135m", "gemma-3-270m"])
    p.add_argument("--domains", nargs="+", default=list(DOMAINS))
    p.add_argument("--eval", type=int, default=3072)
    p.add_argument("--cal", type=int, default=4096)
    p.add_argument("--self", dest="self_", type=int, default=16384)
    a = p.parse_args()
    torch.set_num_threads(2)
    for m in a.models:
        collect(m, a)


if __name__ == "__main__":
    main()
