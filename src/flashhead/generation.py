"""Text generation with a (FlashHead or dense) transformers model: prompts in, texts and timing out."""
from __future__ import annotations

import time

import torch

from .config import FlashHeadError


def check_arguments(prompts, max_new_tokens, temperature, top_p, top_k) -> None:
    if not prompts:
        raise FlashHeadError("give at least one prompt")
    if any(p == "" for p in prompts):
        raise FlashHeadError("a prompt is empty: give the text to continue (--prompt TEXT)")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0 or max_new_tokens < 1:
        raise FlashHeadError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0, max_new_tokens >= 1")


def chat_prompts(tokenizer, prompts: list[str]) -> list[str]:
    """Each prompt as a user turn in the model's chat template, ready for the assistant's reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise FlashHeadError("this tokenizer has no chat template; drop --chat")
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 40, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: int | None = None, chat: bool = False) -> dict:
    """Generate for a batch of prompts (left-padded). temperature 0 = greedy.

    Returns {"texts": [...], "new_tokens": [...], "seconds": float, "tokens_per_second": float}.
    """
    check_arguments(prompts, max_new_tokens, temperature, top_p, top_k)
    if chat:
        prompts = chat_prompts(tokenizer, prompts)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=not chat).to(model.device)
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if seed is not None:
        torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    seconds = time.perf_counter() - t0
    new = out[:, enc["input_ids"].shape[1]:]
    ids = [[t for t in row if t != tokenizer.pad_token_id] for row in new.tolist()]  # drop padding
    counts = [len(row) for row in ids]
    return {"texts": tokenizer.batch_decode(new, skip_special_tokens=True), "token_ids": ids,
            "new_tokens": counts, "seconds": seconds, "tokens_per_second": sum(counts) / seconds}
