"""The decode engine: sequences join, step together, leave. The one loop under `generate` and `serve`.

    engine = Engine(backend, head)                 # head None: the dense head only
    s = engine.add(Request(ids, max_new_tokens=40, exact=True))
    while engine.busy:
        engine.step()                              # every live sequence advances
    s.new, s.logprobs, s.finish

A sequence holds one of the backend's sequence ids (a slot, its own cache) from `add` until it
ends or is cancelled; then its cache is dropped and the slot is free for the next one. Each `step`
prefills the sequences added since the last one, then runs the body once for every other live
sequence (one backend call for all of them) and lets the head pick:

    dense   (an engine without a FlashHead) the backend's own dense head (llama.cpp's full graph)
    fast    FlashHead picks every token (greedy without a [B, V] tensor; sampling and logprobs
            from its full-vocabulary logits); with the head's `context_probes`, each sequence's
            probes include the clusters of the tokens it holds (context.py), its own set
    exact   verified decoding: FlashHead proposes up to K tokens while the body runs as usual and
            writes the cache; when a sequence's K proposals are in (or it proposed an end token),
            the dense head scores their hidden states, with those of every other sequence ready in
            the same step, in one pass over its rows (`backend.dense_logits`); the sequence keeps
            its proposals up to the first the dense head does not accept, takes the dense head's
            token there (tools/speculative.py) and its cache is cut back after it (`backend.cut`).
            Greedy output is the dense head's, token for token; sampling is exact in distribution;
            the logprobs are the dense head's. K adapts per sequence (speculative.DraftLength).

Fast and exact sequences share a step's body call. Each sequence samples with its own seeded
generator, so its tokens do not depend on the other sequences it decodes with.

The live audit (`audit=N`): every N-th token of each fast sequence, the dense head also scores its
hidden state (`backend.dense_argmax`) and the engine counts whether FlashHead's top-1 token is the
dense head's; `stats["audit_checked"]`, `stats["audit_agreed"]`: FlashHead's fidelity on the text
it actually decodes, at the cost of one dense pass in N tokens.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..backends import Entry
from ..core.config import FlashHeadError
from ..core.context import Context, with_next
from ..core.sampling import Sampler, check
from .speculative import DraftLength, accept_greedy, accept_sampled

DRAFT = 16       # the most tokens a sequence proposes per round in exact mode (K's ceiling)


@dataclass
class Request:
    """What one sequence asks for. `ids`: the prompt's token ids; temperature 0 = greedy;
    `logprobs`: each returned token's log-probability (T = 1, full vocabulary: FlashHead's in fast
    mode, the dense head's in exact and dense mode), `top_logprobs` the N best alternatives too;
    `stop_tokens` end the sequence besides the model's end tokens (`ignore_end`: only those)."""
    ids: list
    max_new_tokens: int = 40
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    exact: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    stop_tokens: frozenset = frozenset()
    ignore_end: bool = False


@dataclass
class Seq:
    request: Request
    slot: int
    sampler: Sampler
    ends: set
    new: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    top: list = field(default_factory=list)     # per token: [(token, logprob), ...] best first
    finish: str | None = None     # "stop" (an end token), "length" (max_new_tokens), "cancelled"
    pos: int = 0                  # positions in the backend's cache
    feed: int | None = None       # the next token to feed (not in the cache yet)
    read: int | None = None       # the token the body read last (its next clusters join the context)
    h: torch.Tensor | None = None  # a hidden state not yet proposed from (exact)
    draft: DraftLength | None = None
    k: int = 0                    # this round's proposals (exact)
    first: int = 0                # the cache position of this round's first proposal
    hs: list = field(default_factory=list)
    ys: list = field(default_factory=list)
    qs: list = field(default_factory=list)
    since_audit: int = 0
    ctx: torch.Tensor | None = None  # [K] bool: the clusters of the tokens it holds (context.py)

    @property
    def done(self) -> bool:
        return self.finish is not None

    @property
    def needs_logits(self) -> bool:
        return self.request.logprobs or not self.sampler.greedy


def seed_of(seed: int | None, i: int) -> int | None:
    """The generator seed of the i-th sequence of a call seeded `seed` (distinct per sequence)."""
    return None if seed is None else (seed * 0x9E3779B1 + i) % 2**63


class Engine:
    """Decodes the sequences it holds on `backend` with `head` (a FlashHead; None: the dense head).
    `draft`: exact mode's largest K; `audit`: check every N-th fast token against the dense head
    (0: off)."""

    def __init__(self, backend, head=None, draft: int = DRAFT, audit: int = 0):
        if draft < 1 or audit < 0:
            raise FlashHeadError("need draft >= 1 and audit >= 0")
        self.backend, self.head, self.most_draft, self.audit = backend, head, draft, audit
        self.dense = head is None
        # context-aware probes: each sequence's clusters, passed with its hidden state (context.py);
        # kept whatever the budget, which (with the next clusters) is read from the head at each step
        self._context = None if self.dense else Context(head.assignments, head.num_clusters)
        self.seqs: list[Seq] = []            # live, in the order they joined
        self._new: list[Seq] = []            # added, not prefilled yet
        self._free = list(range(backend.max_sequences))
        self.seconds = {"prefill": 0.0, "body": 0.0, "head": 0.0, "check": 0.0, "audit": 0.0}
        self.stats = {"steps": 0, "body_steps": 0, "body_rows": 0, "largest_batch": 0, "flash_tokens": 0,
                      "dense_tokens": 0, "rounds": 0, "sequence_rounds": 0, "proposed": 0, "accepted": 0,
                      "rejected_steps": 0, "audit_checked": 0, "audit_agreed": 0}

    @property
    def busy(self) -> bool:
        return bool(self.seqs)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def check(self, req: Request) -> None:
        """Errors (one line) for a request that cannot run here: bad sampling values, no prompt, a
        token id outside the vocabulary, exact mode without a FlashHead, no room in the context."""
        check(req.temperature, req.top_p, req.top_k)
        if req.max_new_tokens < 1:
            raise FlashHeadError("need max_new_tokens >= 1")
        if not req.ids:
            raise FlashHeadError("a prompt is empty (no tokens)")
        if min(req.ids) < 0 or max(req.ids) >= self.backend.vocab:
            raise FlashHeadError(f"a prompt holds a token id outside 0..{self.backend.vocab - 1}")
        if req.exact and self.dense:
            raise FlashHeadError("exact mode needs a FlashHead: this model runs the dense head only")
        if req.top_logprobs < 0 or (req.top_logprobs and not req.logprobs):
            raise FlashHeadError("top_logprobs needs logprobs and must be >= 0")
        room(self.backend, len(req.ids) + req.max_new_tokens + (self.most_draft if req.exact else 0))

    def add(self, req: Request) -> Seq:
        """A sequence for `req`, prefilled at the next step (`check`'s errors, or no free slot)."""
        self.check(req)
        if not self._free:
            raise FlashHeadError(f"all {self.backend.max_sequences} sequences are busy")
        ends = (set() if req.ignore_end else set(self.backend.end_tokens())) | set(req.stop_tokens)
        s = Seq(req, self._free.pop(0), Sampler(req.temperature, req.top_p, req.top_k, req.seed), ends,
                draft=DraftLength(self.most_draft) if req.exact else None)
        if self._context is not None:
            s.ctx = self._context.of(req.ids)
        self.seqs.append(s)
        self._new.append(s)
        return s

    def cancel(self, s: Seq) -> None:
        """End `s` now (its tokens so far stay) and free its slot."""
        if not s.done:
            s.finish = "cancelled"
            self._release(s)

    def _release(self, s: Seq) -> None:
        if s in self.seqs:
            self.seqs.remove(s)
            if s in self._new:
                self._new.remove(s)
            self.backend.cut(s.slot, 0)
            self._free.append(s.slot)
            self._free.sort()

    @torch.inference_mode()
    def step(self) -> list[Seq]:
        """Advance every live sequence; returns those that took tokens or ended this step."""
        if not self.seqs:
            return []
        self.stats["steps"] += 1
        touched = []
        fresh, self._new = self._new, []
        if fresh:
            t0 = time.perf_counter()
            out = self.backend.decode([Entry(t, p, s.slot, p == len(s.request.ids) - 1)
                                       for s in fresh for p, t in enumerate(s.request.ids)], self.dense)
            for s, o in zip(fresh, out):
                s.pos = len(s.request.ids)
                s.read = s.request.ids[-1]
                if s.draft is not None:
                    s.h = o.clone()
            self._pick([s for s in fresh if s.draft is None], out[[i for i, s in enumerate(fresh) if s.draft is None]])
            self.seconds["prefill"] += time.perf_counter() - t0
            touched += [s for s in fresh if s.draft is None]
        body = [s for s in self.seqs if s not in fresh and s.h is None]
        if body:
            t0 = time.perf_counter()
            out = self.backend.decode([Entry(s.feed, s.pos, s.slot, True) for s in body], self.dense)
            self.seconds["body"] += time.perf_counter() - t0
            self.stats["body_steps"] += 1
            self.stats["body_rows"] += len(body)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(body))
            for i, s in enumerate(body):
                s.pos += 1
                s.read = s.feed
                if s.draft is not None:
                    s.h = out[i].clone()
            fast = [i for i, s in enumerate(body) if s.draft is None]
            if fast:
                t0 = time.perf_counter()
                self._pick([body[i] for i in fast], out[fast] if len(fast) < len(body) else out)
                self.seconds["head"] += time.perf_counter() - t0
                touched += [body[i] for i in fast]
        proposers = [s for s in self.seqs if s.h is not None]
        if proposers:
            self._propose(proposers)
        ready = [s for s in self.seqs if s.draft is not None and s.ys and s.h is None
                 and (len(s.ys) >= s.k or s.ys[-1] in s.ends)]
        if ready:
            self._check(ready)
            touched += ready
        for s in touched:
            if s.done:
                self._release(s)
        return touched

    # ---- dense and fast: one token per sequence ----------------------------------------------------

    def _pick(self, seqs: list[Seq], out: torch.Tensor) -> None:
        """One token per sequence from the step's output (dense logits or hidden states)."""
        if not seqs:
            return
        plain = [i for i, s in enumerate(seqs) if not s.needs_logits]
        rest = [i for i, s in enumerate(seqs) if s.needs_logits]
        tokens, top1 = [0] * len(seqs), [0] * len(seqs)
        if plain:
            x = out[plain] if rest else out
            got = (x.argmax(-1) if self.dense else self.head.greedy(x, self._ctx(seqs, plain))).tolist()
            for i, t in zip(plain, got):
                tokens[i] = top1[i] = t
        if rest:
            x = out[rest] if plain else out
            logits = x if self.dense else self.head(x, self._ctx(seqs, rest))
            best = logits.argmax(-1).tolist()
            for j, i in enumerate(rest):
                tokens[i], top1[i] = int(seqs[i].sampler(logits[j:j + 1])[0]), best[j]
                self._keep(seqs[i], [tokens[i]], logits[j:j + 1])
        if self.audit and not self.dense:
            self._audit(seqs, out, top1)
        for i, s in enumerate(seqs):
            if i in plain:
                self._keep(s, [tokens[i]], None)
            s.feed = tokens[i]
        self.stats["dense_tokens" if self.dense else "flash_tokens"] += len(seqs)

    def _ctx(self, seqs: list[Seq], rows: list[int]) -> torch.Tensor | None:
        """The contexts [len(rows), K] of seqs[rows]: their clusters and the next clusters of the
        token each read last (None: context-aware probes off)."""
        if self._context is None or not self.head.context_probes:
            return None
        return with_next(torch.stack([seqs[i].ctx for i in rows]), [seqs[i].read for i in rows], self.head.successors)

    def _audit(self, seqs: list[Seq], h: torch.Tensor, top1: list[int]) -> None:
        """The dense head's top-1 for the sequences due an audit, against FlashHead's."""
        due = []
        for i, s in enumerate(seqs):
            s.since_audit += 1
            if s.since_audit >= self.audit:
                s.since_audit = 0
                due.append(i)
        if not due:
            return
        t0 = time.perf_counter()
        dense = self.backend.dense_argmax(h[due] if len(due) < len(seqs) else h).tolist()
        self.stats["audit_checked"] += len(due)
        self.stats["audit_agreed"] += sum(d == top1[i] for d, i in zip(dense, due))
        self.seconds["audit"] += time.perf_counter() - t0

    def _keep(self, s: Seq, tokens: list[int], logits: torch.Tensor | None) -> int:
        """Append kept tokens (with their logprobs from `logits` [len(tokens).., V] when asked), up
        to the sequence's first end token and its budget; returns how many were appended."""
        n = 0
        for j, t in enumerate(tokens):
            s.new.append(t)
            n += 1
            if t in s.ends:
                s.finish = "stop"
            elif len(s.new) >= s.request.max_new_tokens:
                s.finish = "length"
            if s.done:
                break
        if s.ctx is not None and n:
            self._context.add(s.ctx, tokens[:n])
        if s.request.logprobs and n:
            lp = logits[:n].float().log_softmax(-1)
            s.logprobs += lp.gather(1, torch.tensor(tokens[:n])[:, None]).squeeze(1).tolist()
            if s.request.top_logprobs:
                v, i = lp.topk(s.request.top_logprobs, dim=-1)
                s.top += [list(zip(a, b)) for a, b in zip(i.tolist(), v.tolist())]
        return n

    # ---- exact: propose, check ---------------------------------------------------------------------

    def _propose(self, seqs: list[Seq]) -> None:
        """Each sequence's next proposal from its hidden state (greedy ones in one call)."""
        t0 = time.perf_counter()
        H = torch.stack([s.h for s in seqs])
        greedy = [i for i, s in enumerate(seqs) if s.sampler.greedy]
        ys = [0] * len(seqs)
        if greedy:
            got = self.head.flash_greedy(H[greedy] if len(greedy) < len(seqs) else H,
                                         self._ctx(seqs, greedy)).tolist()
            for i, y in zip(greedy, got):
                ys[i] = y
        drawn = [i for i, s in enumerate(seqs) if not s.sampler.greedy]
        if drawn:
            logits = self.head.flash_logits(H[drawn] if greedy else H, self._ctx(seqs, drawn))
            for j, i in enumerate(drawn):
                q = seqs[i].sampler.warp(logits[j:j + 1])
                ys[i] = int(seqs[i].sampler.draw(q)[0])
                seqs[i].qs.append(q[0])
        for i, s in enumerate(seqs):
            if not s.ys:                                   # a round starts
                s.k = min(s.draft.k, s.request.max_new_tokens - len(s.new))
                s.first = s.pos                            # y_j goes to position first + j - 1
            s.hs.append(s.h)
            s.ys.append(ys[i])
            s.h, s.feed = None, ys[i]
        self.seconds["head"] += time.perf_counter() - t0
        self.stats["flash_tokens"] += len(seqs)

    def _check(self, seqs: list[Seq]) -> None:
        """The dense head on every proposed position of `seqs` in one pass over its rows; each
        sequence keeps what it accepts and its cache is cut back to it."""
        t0 = time.perf_counter()
        H = torch.stack([h for s in seqs for h in s.hs])
        need_logits = any(s.needs_logits for s in seqs)
        dense = self.backend.dense_logits(H) if need_logits else self.backend.dense_argmax(H)
        self.stats["rounds"] += 1
        row = 0
        for s in seqs:
            n_prop = len(s.ys)
            d = dense[row:row + n_prop]
            row += n_prop
            y = torch.tensor(s.ys)
            if s.sampler.greedy:
                n, tok = accept_greedy(y, d.argmax(1) if need_logits else d)
            else:
                n, tok = accept_sampled(y, s.sampler.warp(d), torch.stack(s.qs), s.sampler)
            kept = s.ys[:n] + ([] if tok is None else [tok])
            appended = self._keep(s, kept, d if s.request.logprobs else None)
            self.stats["proposed"] += n_prop
            self.stats["accepted"] += n
            self.stats["sequence_rounds"] += 1
            self.stats["dense_tokens"] += tok is not None
            s.draft.update(n, n_prop)
            s.hs, s.ys, s.qs = [], [], []
            if s.done:
                continue                                   # _release drops its cache
            # the cache holds y_1 .. y_{n_prop - 1} from position first; keep y_1 .. y_n
            keep_to = s.first + n
            if tok is not None and keep_to < s.pos:
                self.stats["rejected_steps"] += s.pos - keep_to
                self.backend.cut(s.slot, keep_to)
                s.pos = keep_to
            s.feed = kept[appended - 1]
        self.seconds["check"] += time.perf_counter() - t0


def room(backend, need: int) -> None:
    """A sequence of `need` positions fits the model's trained context and the backend's cache;
    one line else."""
    trained = getattr(backend, "trained_ctx", None)
    if trained and need > trained:
        raise FlashHeadError(f"a prompt plus its new tokens needs {need} positions, more than the "
                             f"model's trained context ({trained})")
    if need > backend.n_ctx:
        raise FlashHeadError(f"a prompt plus its new tokens needs {need} cache positions, more than "
                             f"a sequence holds here (n_ctx {backend.n_ctx})")
