"""A model to run: a Backend for its body and its FlashHead, opened from a FlashHead directory.

    model = flashhead.load("models/gemma-3-270m-flashhead")            # llama.cpp where installed
    out = model.generate(["The capital of France is"], max_new_tokens=20)          # fast
    out = model.generate(["The capital of France is"], max_new_tokens=20, mode="exact")
    model.close()

`backend="llamacpp"` runs the GGUF file the directory was built from (or `gguf=`), the head's rows
read in the file's Q8_0 blocks; `backend="transformers"` the directory's weights in PyTorch;
"auto" takes llama.cpp where llama-cpp-python is installed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..backends import choose
from ..core.config import FlashHeadError
from .generate import generate
from ..backends.transformers import TransformersBackend
from ..build.sources import gguf_of
from ..core.head import FlashHead
from ..core.layout import load_assets


class Model:
    def __init__(self, backend, head=None, model_dir=None):
        self.backend, self.head, self.model_dir = backend, head, model_dir

    def generate(self, prompts: list, **kwargs) -> dict:
        """tools.generate.generate on this model: mode "fast" (default), "exact" or "dense"."""
        return generate(self.backend, self.head, prompts, **kwargs)

    def memory(self) -> dict:
        return self.backend.memory(self.head)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(model_dir, backend: str = "auto", gguf=None, probes: int | None = None, arrange: bool = True,
         n_ctx: int = 2048, threads: int | None = None, max_sequences: int = 8, dense: bool = False,
         dtype=torch.float32, context_probes: int | None = None) -> Model:
    """Open a FlashHead model directory on a backend. `dense=True`: the dense head only (no assets
    needed). `arrange`: keep the head's rows in cluster order (stage 2 about 2x faster, one more
    copy of the head's bytes); False reads them in place. `n_ctx`: positions each sequence may
    hold (llama.cpp sizes its cache from it); `max_sequences`: sequences decoded together.
    `context_probes`: of the probes, the most that go to a sequence's own clusters (context.py;
    None: the model's default, 0: off)."""
    model = _load(model_dir, backend, gguf, probes, arrange, n_ctx, threads, max_sequences, dense, dtype)
    if context_probes is not None and model.head is not None:
        model.head.context_probes = context_probes
    return model


def _load(model_dir, backend, gguf, probes, arrange, n_ctx, threads, max_sequences, dense, dtype) -> Model:
    model_dir = Path(model_dir)
    name = choose(backend)
    if name == "llamacpp":
        from ..backends.llamacpp import LlamaCppBackend

        index = None if dense else load_assets(model_dir)        # fail fast, before the model load
        b = LlamaCppBackend(gguf_of(model_dir, gguf), n_ctx=n_ctx, threads=threads,
                            max_sequences=max_sequences, chat_dir=model_dir)
        head = None if index is None else FlashHead(b.head_weight(), index, probes, arrange=arrange)
        return Model(b, head, model_dir)
    if gguf is not None:
        raise FlashHeadError("--gguf names the llama.cpp backend's file: leave it out with transformers")
    from ..integrations import hf

    model, tok = hf.load(model_dir, dense=dense, probes=probes, dtype=dtype,
                         arrange=None if arrange else False)
    if threads:
        torch.set_num_threads(threads)
    head = None if dense else model.lm_head.flashhead
    return Model(TransformersBackend(model, tok, max_sequences=max_sequences), head, model_dir)
