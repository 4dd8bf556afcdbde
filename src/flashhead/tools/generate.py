"""`generate`: a batch of prompts through the decode engine (tools/engine.py), in one of three modes.

    dense   the backend's own dense head (llama.cpp's full graph, transformers' product)
    fast    FlashHead picks every token
    exact   verified decoding: FlashHead proposes, the dense head checks K positions at once; greedy
            output is the dense head's, token for token; sampling is exact in distribution

All sequences of a batch decode together: one backend call per step for every live sequence.
Returns texts, token ids and timing split into the prefill, the body, the head and (exact) the
check, with the acceptance.
"""
from __future__ import annotations

import time

import torch

from ..core.config import FlashHeadError
from .engine import DRAFT, Engine, Request, seed_of

MODES = ("fast", "exact", "dense")


@torch.inference_mode()
def generate(backend, head, prompts: list, max_new_tokens: int = 40, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: int | None = None, mode: str = "fast",
             logprobs: bool = False, chat: bool = False, stop_tokens=(), draft: int = DRAFT,
             ignore_end: bool = False, audit: int = 0) -> dict:
    """Generate for a batch of prompts (texts, or token-id lists) on `backend` with `head` (a
    FlashHead; None for mode "dense"). temperature 0 = greedy; each sequence samples with its own
    generator (`seed` and its index). `logprobs`: each returned token's log-probability (T = 1, full
    vocabulary: FlashHead's in fast mode, the dense head's otherwise). `stop_tokens`: ids that end
    a sequence besides the model's end tokens (`ignore_end`: only those; benchmarks decode a fixed
    count). `draft`: exact mode's largest K. `audit`: fast mode checks every N-th token against the
    dense head and reports the agreement (tools/engine.py)."""
    if mode not in MODES:
        raise FlashHeadError(f"unknown mode {mode!r}: choose {', '.join(MODES)}")
    if mode != "dense" and head is None:
        raise FlashHeadError(f"mode {mode!r} needs a FlashHead (this model was opened without assets)")
    if not prompts or len(prompts) > backend.max_sequences:
        raise FlashHeadError(f"give 1..{backend.max_sequences} prompts, got {len(prompts)}")
    if any(isinstance(p, str) and not p for p in prompts):
        raise FlashHeadError("a prompt is empty: give the text to continue")
    ids = [(backend.chat_tokens(p) if chat else backend.tokenize(p)) if isinstance(p, str) else list(p)
           for p in prompts]
    backend.reset()
    engine = Engine(backend, None if mode == "dense" else head, draft, audit if mode == "fast" else 0)
    seqs = [engine.add(Request(x, max_new_tokens, temperature, top_p, top_k, seed_of(seed, i),
                               exact=mode == "exact", logprobs=logprobs, stop_tokens=frozenset(stop_tokens),
                               ignore_end=ignore_end)) for i, x in enumerate(ids)]
    t0 = time.perf_counter()
    while engine.busy:
        engine.step()
    seconds = time.perf_counter() - t0
    count = sum(len(s.new) for s in seqs)
    sec, st = engine.seconds, engine.stats
    res = {"mode": mode, "backend": backend.name,
           "texts": [backend.detokenize([t for t in s.new if t not in s.ends]) for s in seqs],
           "token_ids": [s.new for s in seqs], "new_tokens": [len(s.new) for s in seqs],
           "finish": [s.finish for s in seqs],
           "prefill_seconds": sec["prefill"], "seconds": seconds, "tokens_per_second": count / seconds,
           # after the prefill (and its first token): the body's decode steps, the head's picks
           # (exact: its proposals) and the check
           # (the same count in every mode: exact mode's first token is counted with the decode)
           "decode_tokens_per_second": (count - len(seqs)) / max(seconds - sec["prefill"], 1e-9),
           "head_seconds": sec["head"] - sec["audit"], "body_seconds": sec["body"]}
    if engine.audit:
        res["audit"] = {"every": audit, "checked": st["audit_checked"], "agreed": st["audit_agreed"],
                        "agreement": st["audit_agreed"] / max(st["audit_checked"], 1), "seconds": sec["audit"]}
    if logprobs:
        res["logprobs"] = [s.logprobs for s in seqs]
    if mode == "exact":
        res["check_seconds"] = sec["check"]
        keys = ("rounds", "sequence_rounds", "proposed", "accepted", "body_steps", "rejected_steps")
        res["exact"] = {**{k: st[k] for k in keys}, "acceptance": st["accepted"] / max(st["proposed"], 1),
                        "mean_draft": st["proposed"] / max(st["sequence_rounds"], 1),
                        "tokens_per_check": count / max(st["sequence_rounds"], 1)}
    else:
        res["body_steps"] = st["body_steps"]
    return res
