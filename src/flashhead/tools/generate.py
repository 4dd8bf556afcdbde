"""The one generate loop: any Backend, any head, three modes.

    dense   the backend's own dense head (llama.cpp's full graph, transformers' product)
    fast    FlashHead picks every token (greedy without a [B, V] tensor; sampling and logprobs from
            its full-vocabulary logits)
    exact   verified decoding: FlashHead proposes up to K tokens per sequence while the body runs
            as usual and writes the cache; then the dense head scores the K hidden states of every
            sequence in one pass over its rows (`backend.dense_logits`); each sequence keeps its
            proposals up to the first the dense head does not accept, takes the dense head's token
            there (tools/speculative.py) and its cache is cut back after it (`backend.cut`). Greedy
            output is the dense head's, token for token; sampling is exact in distribution; the
            logprobs are the dense head's. K adapts per sequence (speculative.DraftLength).

All sequences of a batch decode together: one backend call per step for every live sequence (in
exact mode, one dense check per round for every sequence). Returns texts, token ids and timing
split into the body, the head and (exact) the check, with the acceptance.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..backends import Entry
from ..config import FlashHeadError
from ..sampling import Sampler, check
from .speculative import DraftLength, accept_greedy, accept_sampled

MODES = ("fast", "exact", "dense")
DRAFT = 16       # the most tokens a sequence proposes per round in exact mode (K's ceiling)


@dataclass
class _Seq:
    slot: int                     # the backend's sequence id
    prompt: list
    new: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    pos: int = 0                  # positions in the backend's cache
    feed: int | None = None       # the next token to feed (not in the cache yet)
    h: torch.Tensor | None = None  # a hidden state not yet used (after the prefill)
    done: bool = False
    draft: DraftLength | None = None


class _Clock:
    def __init__(self):
        self.seconds = {"body": 0.0, "head": 0.0, "check": 0.0}

    def time(self, part: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.seconds[part] += time.perf_counter() - t0
        return out


@torch.inference_mode()
def generate(backend, head, prompts: list, max_new_tokens: int = 40, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, seed: int | None = None, mode: str = "fast",
             logprobs: bool = False, chat: bool = False, stop_tokens=(), draft: int = DRAFT,
             ignore_end: bool = False) -> dict:
    """Generate for a batch of prompts (texts, or token-id lists) on `backend` with `head` (a
    FlashHead; None for mode "dense"). temperature 0 = greedy. `logprobs`: each returned token's
    log-probability (T = 1, full vocabulary: FlashHead's in fast mode, the dense head's otherwise).
    `stop_tokens`: ids that end a sequence besides the model's end tokens (`ignore_end`: only
    those; benchmarks decode a fixed count). `draft`: exact mode's largest K."""
    if mode not in MODES:
        raise FlashHeadError(f"unknown mode {mode!r}: choose {', '.join(MODES)}")
    if mode != "dense" and head is None:
        raise FlashHeadError(f"mode {mode!r} needs a FlashHead (this model was opened without assets)")
    check(temperature, top_p, top_k)
    if max_new_tokens < 1 or draft < 1:
        raise FlashHeadError("need max_new_tokens >= 1 and draft >= 1")
    if not prompts or len(prompts) > backend.max_sequences:
        raise FlashHeadError(f"give 1..{backend.max_sequences} prompts, got {len(prompts)}")
    if any(isinstance(p, str) and not p for p in prompts):
        raise FlashHeadError("a prompt is empty: give the text to continue")
    ids = [(backend.chat_tokens(p) if chat else backend.tokenize(p)) if isinstance(p, str) else list(p)
           for p in prompts]
    if any(not x for x in ids):
        raise FlashHeadError("a prompt is empty (no tokens)")
    _check_room(backend, [len(x) + max_new_tokens + (draft if mode == "exact" else 0) for x in ids])
    sampler = Sampler(temperature, top_p, top_k, seed)
    ends = (set() if ignore_end else set(backend.end_tokens())) | set(stop_tokens)
    seqs = [_Seq(i, x, draft=DraftLength(draft) if mode == "exact" else None) for i, x in enumerate(ids)]
    clock = _Clock()
    stats = {"rounds": 0, "sequence_rounds": 0, "proposed": 0, "accepted": 0, "body_steps": 0,
             "rejected_steps": 0}
    backend.reset()
    t0 = time.perf_counter()
    entries = [Entry(t, p, s.slot, p == len(s.prompt) - 1) for s in seqs for p, t in enumerate(s.prompt)]
    out = backend.decode(entries, mode == "dense")         # the prefill: timed apart (prefill_seconds)
    for s in seqs:
        s.pos = len(s.prompt)
    if mode == "exact":
        for s, h in zip(seqs, out):
            s.h = h.clone()
        t_prefill = time.perf_counter()
        clock.seconds["head"] = 0.0
        while any(not s.done for s in seqs):
            _round(backend, head, [s for s in seqs if not s.done], sampler, logprobs, ends,
                   max_new_tokens, clock, stats)
    else:
        _pick(head, seqs, out, mode, sampler, logprobs, ends, max_new_tokens, clock)
        t_prefill = time.perf_counter()
        clock.seconds["head"] = 0.0                     # the first token's pick belongs to the prefill
        while True:
            live = [s for s in seqs if not s.done]
            if not live:
                break
            entries = [Entry(s.feed, s.pos, s.slot, True) for s in live]
            out = clock.time("body", backend.decode, entries, mode == "dense")
            stats["body_steps"] += 1
            for s in live:
                s.pos += 1
            _pick(head, live, out, mode, sampler, logprobs, ends, max_new_tokens, clock)
    t1 = time.perf_counter()
    count = sum(len(s.new) for s in seqs)
    res = {"mode": mode, "backend": backend.name,
           "texts": [backend.detokenize([t for t in s.new if t not in ends]) for s in seqs],
           "token_ids": [s.new for s in seqs], "new_tokens": [len(s.new) for s in seqs],
           "prefill_seconds": t_prefill - t0, "seconds": t1 - t0, "tokens_per_second": count / (t1 - t0),
           "decode_tokens_per_second": (count - len(seqs)) / max(t1 - t_prefill, 1e-9),
           # after the prefill: the body's decode steps and the head's picks (exact: proposals)
           "head_seconds": clock.seconds["head"], "body_seconds": clock.seconds["body"]}
    if logprobs:
        res["logprobs"] = [s.logprobs for s in seqs]
    if mode == "exact":
        res["check_seconds"] = clock.seconds["check"]
        res["exact"] = {**stats, "acceptance": stats["accepted"] / max(stats["proposed"], 1),
                        "mean_draft": stats["proposed"] / max(stats["sequence_rounds"], 1),
                        "tokens_per_check": count / max(stats["sequence_rounds"], 1)}
    else:
        res["body_steps"] = stats["body_steps"]
    return res


def _check_room(backend, need: list[int]) -> None:
    """Every sequence within the model's trained context and the backend's cache; one line else."""
    trained = getattr(backend, "trained_ctx", None)
    if trained and max(need) > trained:
        raise FlashHeadError(f"a prompt plus its new tokens needs {max(need)} positions, more than the "
                             f"model's trained context ({trained})")
    if max(need) > backend.n_ctx:
        raise FlashHeadError(f"a prompt plus its new tokens needs {max(need)} cache positions, more than "
                             f"a sequence holds here (n_ctx {backend.n_ctx})")


def _finish(s: _Seq, tokens: list[int], lps: list[float] | None, ends: set, most: int) -> int:
    """Append kept tokens to a sequence, up to its first end token and its budget; returns how
    many were appended."""
    n = 0
    for j, t in enumerate(tokens):
        s.new.append(t)
        if lps is not None:
            s.logprobs.append(lps[j])
        n += 1
        if t in ends or len(s.new) >= most:
            s.done = True
            break
    return n


def _pick(head, seqs, out, mode, sampler, logprobs, ends, most, clock) -> None:
    """dense / fast: one token per sequence from the step's output (dense logits or hidden states)."""
    t0 = time.perf_counter()
    if mode == "fast" and sampler.greedy and not logprobs:
        tokens, lps = head.greedy(out).tolist(), None                 # no [B, V] tensor
    else:
        logits = out if mode == "dense" else head(out)
        chosen = sampler(logits)
        tokens = chosen.tolist()
        lps = logits.float().log_softmax(-1).gather(1, chosen[:, None]).squeeze(1).tolist() if logprobs else None
    clock.seconds["head"] += time.perf_counter() - t0
    for i, s in enumerate(seqs):
        _finish(s, [tokens[i]], None if lps is None else [lps[i]], ends, most)
        s.feed = tokens[i]


def _round(backend, head, live, sampler, logprobs, ends, most, clock, stats) -> None:
    """One round of verified decoding for the live sequences: propose, check in one pass, keep."""
    k = {s.slot: min(s.draft.k, most - len(s.new)) for s in live}
    hs = {s.slot: [] for s in live}
    ys = {s.slot: [] for s in live}
    qs = {s.slot: [] for s in live}
    first = {}
    drafting = list(live)
    while drafting:
        feeders = [s for s in drafting if s.h is None]
        if feeders:
            out = clock.time("body", backend.decode, [Entry(s.feed, s.pos, s.slot, True) for s in feeders])
            stats["body_steps"] += 1
            for s, h in zip(feeders, out):
                s.h, s.pos = h.clone(), s.pos + 1
        for s in drafting:
            first.setdefault(s.slot, s.pos)       # y_j goes to position first + j - 1
        H = torch.stack([s.h for s in drafting])
        t0 = time.perf_counter()
        if sampler.greedy:
            y = head.flash_greedy(H)
            q = None
        else:
            q = sampler.warp(head.flash_logits(H))
            y = sampler.draw(q)
        clock.seconds["head"] += time.perf_counter() - t0
        nxt = []
        for i, s in enumerate(drafting):
            hs[s.slot].append(s.h)
            ys[s.slot].append(int(y[i]))
            if q is not None:
                qs[s.slot].append(q[i])
            s.h, s.feed = None, int(y[i])
            if len(ys[s.slot]) < k[s.slot] and s.feed not in ends:
                nxt.append(s)
        drafting = nxt
    # the check: every proposed position of every sequence in one pass over the dense head's rows
    t0 = time.perf_counter()
    H = torch.stack([h for s in live for h in hs[s.slot]])
    need_logits = logprobs or not sampler.greedy
    dense = backend.dense_logits(H) if need_logits else backend.dense_argmax(H)
    row = 0
    stats["rounds"] += 1
    for s in live:
        n_prop = len(ys[s.slot])
        d = dense[row:row + n_prop]
        row += n_prop
        y = torch.tensor(ys[s.slot])
        if sampler.greedy:
            n, tok = accept_greedy(y, d.argmax(1) if need_logits else d)
        else:
            n, tok = accept_sampled(y, sampler.warp(d), torch.stack(qs[s.slot]), sampler)
        kept = ys[s.slot][:n] + ([] if tok is None else [tok])
        lps = None
        if logprobs:
            lps = d[:len(kept)].log_softmax(-1).gather(1, torch.tensor(kept)[:, None]).squeeze(1).tolist()
        appended = _finish(s, kept, lps, ends, most)
        stats["proposed"] += n_prop
        stats["accepted"] += n
        stats["sequence_rounds"] += 1
        s.draft.update(n, n_prop)
        if s.done:
            backend.cut(s.slot, 0)                       # its cache is no longer needed
            continue
        # the cache holds y_1 .. y_{n_prop - 1} from position first; keep y_1 .. y_n
        keep_to = first[s.slot] + n
        if tok is not None and keep_to < s.pos:
            stats["rejected_steps"] += s.pos - keep_to
            backend.cut(s.slot, keep_to)
            s.pos = keep_to
        s.feed = kept[appended - 1]
    clock.seconds["check"] += time.perf_counter() - t0
