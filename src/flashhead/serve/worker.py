"""The server's decode thread: continuous batching over the engine (tools/engine.py).

Requests arrive from the HTTP handlers (any thread) as `Job`s. The worker thread owns the model:
it tokenizes and checks each new job (an error goes back at once), keeps the accepted ones in a
queue, and admits them when the engine has a free sequence for each of their choices; then every
`engine.step()` decodes all live sequences in one backend call, new ones joining at the next step.
After each step it turns the sequences' new tokens into text deltas (stop strings cut, a text held
back while it could still become one) and hands them to the job's handler through its asyncio
queue. A cancelled job (its client went away) leaves at the next step and its caches are freed.

The worker thread also makes the model (`Worker(load)`: `load()` runs there) and closes it at the
end: made in the main thread and stepped in this one, llama.cpp's decode ran ~30% slower
(docs/SERVE.md, "Speed and load").
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from ..core.config import FlashHeadError
from ..tools.engine import Engine, Request, seed_of

log = logging.getLogger("flashhead.serve")


@dataclass
class Choice:
    index: int
    seq: object = None            # the engine's Seq once admitted
    sent_tokens: int = 0          # tokens handed to the client
    sent_text: str = ""
    finish: str | None = None
    ids: list = field(default_factory=list)   # the output's tokens, end tokens left out
    text: str = ""                # their text so far (incremental: _text)
    prefix: int = 0               # ids[prefix:read] is the window the last piece of text came from
    read: int = 0


def _text(ch: Choice, new: list[int], detokenize, final: bool) -> str:
    """The choice's text with `new` tokens added, decoding only a few tokens each time (the text of
    ids[prefix:] minus that of ids[prefix:read]: both start at the same token, so a tokenizer that
    treats a first token apart does so alike); a character split across tokens waits for the rest."""
    ch.ids += new
    window = detokenize(ch.ids[ch.prefix:])
    done = detokenize(ch.ids[ch.prefix:ch.read]) if ch.read > ch.prefix else ""
    if len(window) > len(done) and (final or not window.endswith("\ufffd")):
        ch.text += window[len(done):]
        ch.prefix, ch.read = ch.read, len(ch.ids)
    return ch.text


@dataclass
class Job:
    """One HTTP request: its prompts (texts, token ids or chat conversations) x n choices."""
    prompts: list
    chat: bool
    params: dict                  # Request fields: max_new_tokens (None: to the context's end), ...
    stop: list
    n: int
    deliver: object               # callable(event: dict), thread-safe (the handler's queue)
    id: int = field(default_factory=itertools.count().__next__)
    choices: list = field(default_factory=list)
    requests: list = field(default_factory=list)
    prompt_tokens: int = 0
    cancelled: bool = False
    created: float = field(default_factory=time.time)


class Worker:
    def __init__(self, load, max_queue: int = 64, exact: bool = False, audit: int = 0, log_every: float = 30.0):
        """`load()` returns the model (tools.model.Model); it runs in the decode thread, and an error
        it raises is raised here."""
        self.max_queue, self.exact, self.audit = max_queue, exact, audit
        self.log_every, self._logged = log_every, (time.time(), 0)
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: list[Job] = []
        self._running: list[Job] = []
        self._stop, self._go, self._made = threading.Event(), threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self.counters = {"requests": 0, "rejected": 0, "cancelled": 0, "finished": 0, "prompt_tokens": 0,
                         "generation_tokens": 0, "busy_seconds": 0.0}
        self._thread = threading.Thread(target=self._run, args=(load,), name="flashhead-decode", daemon=True)
        self._thread.start()
        self._made.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        self.started = time.time()

    def _run(self, load) -> None:
        model = None
        try:
            self.model = model = load()
            self.backend = model.backend
            self.engine = Engine(self.backend, model.head, audit=self.audit)
        except BaseException as e:            # raised again by __init__, in the caller's thread
            self._error = e
            if model is not None:
                model.close()
            return
        finally:
            self._made.set()
        try:
            self._go.wait()
            if not self._stop.is_set():
                self.backend.reset()
                self._loop()
        finally:
            self.model.close()

    # ---- called from the HTTP side -----------------------------------------------------------------

    def start(self) -> None:
        self._go.set()

    def stop(self) -> None:
        """End the decode loop and close the model (also when the loop never started)."""
        self._stop.set()
        self._go.set()
        self._thread.join(timeout=30)

    @property
    def queued(self) -> int:
        return self._inbox.qsize() + len(self._waiting)

    def submit(self, job: Job) -> bool:
        """Queue `job`; False when the queue is full (the handler answers 503)."""
        if self.queued >= self.max_queue:
            self.counters["rejected"] += 1
            return False
        self._inbox.put(job)
        return True

    def cancel(self, job: Job) -> None:
        job.cancelled = True

    def metrics(self) -> dict:
        e, c = self.engine, self.counters
        st = e.stats
        return {"uptime_seconds": time.time() - self.started, **c,
                "requests_running": len(self._running), "requests_waiting": self.queued,
                "sequences_live": len(e.seqs), "sequences_free": e.free_slots,
                "sequences_max": self.backend.max_sequences,
                "generation_tokens_per_second": c["generation_tokens"] / max(c["busy_seconds"], 1e-9),
                **{k: st[k] for k in ("steps", "body_steps", "body_rows", "largest_batch", "flash_tokens",
                                      "dense_tokens", "rounds", "proposed", "accepted", "audit_checked",
                                      "audit_agreed")},
                "mean_batch": st["body_rows"] / max(st["body_steps"], 1),
                "acceptance": st["accepted"] / max(st["proposed"], 1),
                "audit_every": e.audit, "audit_agreement": st["audit_agreed"] / max(st["audit_checked"], 1),
                "head": "dense" if e.dense else "flashhead"}

    def _log(self) -> None:
        """One line every `log_every` seconds while there is traffic (vLLM's stats line, in kind)."""
        now, (then, tokens) = time.time(), self._logged
        if now - then < self.log_every or self.counters["generation_tokens"] == tokens:
            return
        m = self.metrics()
        audit = (f", audit: FlashHead top-1 = dense on {m['audit_agreed']}/{m['audit_checked']} "
                 f"({100 * m['audit_agreement']:.2f}%)" if m["audit_every"] else "")
        log.info("%.1f tokens/s generated, %d running, %d waiting, mean batch %.2f, %d FlashHead / %d dense "
                 "tokens%s", (m["generation_tokens"] - tokens) / (now - then), m["requests_running"],
                 m["requests_waiting"], m["mean_batch"], m["flash_tokens"], m["dense_tokens"], audit)
        self._logged = (now, m["generation_tokens"])

    # ---- the decode thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._take(block=not self.engine.busy and not self._waiting)
                self._drop_cancelled()
                self._admit()
                if self.engine.busy:
                    t0 = time.perf_counter()
                    touched = self.engine.step()
                    self.counters["busy_seconds"] += time.perf_counter() - t0
                    self._deliver(touched)
                self._log()
            except Exception as e:                  # never take the server down; fail the jobs in flight
                log.exception("decode step failed")
                for job in self._running:
                    job.deliver({"error": f"internal error: {type(e).__name__}: {e}", "status": 500})
                    for ch in job.choices:
                        if ch.seq is not None:
                            self.engine.cancel(ch.seq)
                self._running.clear()

    def _take(self, block: bool) -> None:
        try:
            job = self._inbox.get(timeout=0.1) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._accept(job)
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _accept(self, job: Job) -> None:
        """Tokenize and check a job; answer it: an error, or accepted (it waits for sequences)."""
        self.counters["requests"] += 1
        try:
            b = self.backend
            ids = [b.chat_tokens(p) if job.chat else (b.tokenize(p) if isinstance(p, str) else list(p))
                   for p in job.prompts]
            if job.n * len(ids) > b.max_sequences:
                raise FlashHeadError(f"n x prompts = {job.n * len(ids)}: this server decodes at most "
                                     f"{b.max_sequences} sequences at once (--max-sequences)")
            exact = self.exact if job.params.get("exact") is None else job.params["exact"]
            draft = self.engine.most_draft if exact else 0
            params = {k: v for k, v in job.params.items() if k != "exact"}
            job.requests = []
            for x in ids:
                most = params.get("max_new_tokens")
                if most is None:                   # chat without max_tokens: to the context's end
                    most = min(b.n_ctx, getattr(b, "trained_ctx", b.n_ctx)) - len(x) - draft
                    if most < 1:
                        raise FlashHeadError(f"the prompt holds {len(x)} tokens: no room left in the "
                                             f"context ({b.n_ctx})")
                for j in range(job.n):
                    fields = {**params, "max_new_tokens": most, "seed": seed_of(params.get("seed"), j)}
                    job.requests.append(Request(x, exact=exact, **fields))
            for r in job.requests:
                self.engine.check(r)
            job.prompt_tokens = sum(len(x) for x in ids)
        except (FlashHeadError, ValueError, TypeError) as e:
            job.deliver({"error": str(e), "status": 400})
            return
        job.choices = [Choice(i) for i in range(len(job.requests))]
        self._waiting.append(job)
        job.deliver({"accepted": True, "prompt_tokens": job.prompt_tokens})

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting + self._running if j.cancelled]:
            for ch in job.choices:
                if ch.seq is not None:
                    self.engine.cancel(ch.seq)
            if job in self._waiting:
                self._waiting.remove(job)
            else:
                self._running.remove(job)
            self.counters["cancelled"] += 1

    def _admit(self) -> None:
        """First come, first served: the oldest waiting job starts when all its choices fit."""
        while self._waiting and self.engine.free_slots >= len(self._waiting[0].requests):
            job = self._waiting.pop(0)
            try:
                for ch, r in zip(job.choices, job.requests):
                    ch.seq = self.engine.add(r)
                    ch.seq.job, ch.seq.choice = job, ch
            except FlashHeadError as e:
                for ch in job.choices:
                    if ch.seq is not None:
                        self.engine.cancel(ch.seq)
                job.deliver({"error": str(e), "status": 400})
                continue
            self.counters["prompt_tokens"] += job.prompt_tokens
            self._running.append(job)

    def _deliver(self, touched) -> None:
        jobs = {}
        for s in touched:
            job, ch = getattr(s, "job", None), getattr(s, "choice", None)
            if job is None or job.cancelled:
                continue
            jobs.setdefault(job.id, job)
            delta = self._delta(job, ch)
            if delta is not None:
                job.deliver(delta)
        for job in jobs.values():
            if all(ch.finish for ch in job.choices):
                self._running.remove(job)
                self.counters["finished"] += 1
                job.deliver({"done": True, "completion_tokens": sum(ch.sent_tokens for ch in job.choices)})

    def _delta(self, job: Job, ch: Choice) -> dict | None:
        """The text (and logprobs) a choice's new tokens add; a stop string ends the choice."""
        s, b = ch.seq, self.backend
        finish = {"stop": "stop", "length": "length"}.get(s.finish)
        text = _text(ch, [t for t in s.new[ch.sent_tokens:] if t not in s.ends], b.detokenize, finish is not None)
        cut = min((i for i in (text.find(x, max(len(ch.sent_text) - len(x) + 1, 0)) for x in job.stop)
                   if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
            if not s.done:
                self.engine.cancel(s)
        hold = 0
        if finish is None:
            for x in job.stop:                # a stop string may be starting: hold its prefix back
                for k in range(min(len(x) - 1, len(text)), 0, -1):
                    if text.endswith(x[:k]):
                        hold = max(hold, k)
                        break
        shown = text[:len(text) - hold]
        new = s.new[ch.sent_tokens:]
        out = {"index": ch.index, "text": shown[len(ch.sent_text):], "finish": finish, "tokens": new}
        if s.request.logprobs:
            out["logprobs"] = s.logprobs[ch.sent_tokens:ch.sent_tokens + len(new)]
            rows = s.top[ch.sent_tokens:ch.sent_tokens + len(new)] if s.request.top_logprobs else [[]] * len(new)
            out["top"] = [[(b.detokenize([t]), v) for t, v in row] for row in rows]
            out["pieces"] = [b.detokenize([t]) for t in new]
        self.counters["generation_tokens"] += len(new)
        ch.sent_tokens += len(new)
        ch.sent_text = shown if finish is None else text
        ch.finish = finish
        if not out["text"] and not finish and not (new and s.request.logprobs):
            return None
        return out
