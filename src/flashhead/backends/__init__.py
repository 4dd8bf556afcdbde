"""Backends: what runs a model's body. One small protocol; the tools (generate, eval, bench, serve)
take any Backend and any head, so a feature is written once for every runtime.

    transformers   backends/transformers.py   the model's body in PyTorch, one cache per sequence
    llama.cpp      backends/llamacpp.py       the GGUF file's graph, stopped at `result_norm`

A Backend decodes a batch of entries (token, position, sequence, wants an output), each sequence
with its own cache, to the final normed hidden states [n_outputs, d] (the head's input), or to the
runtime's own dense logits [n_outputs, V] (`logits=True`: the dense model as its runtime runs it);
gives the dense head's logits of any hidden states (`dense_logits`; `dense_argmax`: its greedy
tokens only); cuts a sequence's cache back
to a position (`cut`: verified decoding's rejections); and names the head's rows as it stores them
(`head_weight`: a tensor, or the GGUF file's Q8_0 blocks). vLLM is an engine, reached through its
plugin (integrations/vllm), not a Backend.
"""
from __future__ import annotations

import importlib.util
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from ..core.config import FlashHeadError

NAMES = ("transformers", "llamacpp")


class Entry(NamedTuple):
    token: int
    position: int
    seq: int
    output: bool


@runtime_checkable
class Backend(Protocol):
    name: str              # "transformers", "llamacpp"
    vocab: int
    hidden: int
    n_ctx: int             # positions one sequence may hold
    max_sequences: int     # sequences held at once (sequence ids 0 .. max_sequences-1)
    threads: int

    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...
    def detokenize(self, ids: list[int]) -> str: ...
    def end_tokens(self) -> set[int]: ...
    def chat_tokens(self, prompt) -> list[int]: ...      # a text (a user turn) or a conversation
    def decode(self, entries: list[Entry], logits: bool = False) -> torch.Tensor: ...
    def dense_logits(self, h: torch.Tensor) -> torch.Tensor: ...
    def dense_argmax(self, h: torch.Tensor) -> torch.Tensor: ...
    def head_weight(self): ...
    def cut(self, seq: int, position: int) -> None: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


def chat_text(tokenizer, prompt) -> str:
    """`prompt` (a text: one user turn; or a conversation: [{"role", "content"}, ...]) in
    `tokenizer`'s chat template, ready for the assistant's reply (its control tokens written as
    text: tokenize it without an extra BOS)."""
    if not getattr(tokenizer, "chat_template", None):
        raise FlashHeadError("this model's tokenizer has no chat template: give a plain prompt")
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as e:          # the template's own checks (e.g. roles that must alternate)
        raise FlashHeadError(f"the chat template refused these messages: {e}") from None


def choose(name: str = "auto") -> str:
    """The backend to run: `auto` takes llama.cpp where llama-cpp-python is installed (the fastest
    CPU path), else transformers; an explicit name is checked."""
    if name == "auto":
        return "llamacpp" if importlib.util.find_spec("llama_cpp") else "transformers"
    if name not in NAMES:
        raise FlashHeadError(f"unknown backend {name!r}: choose auto, {', '.join(NAMES)}")
    return name
