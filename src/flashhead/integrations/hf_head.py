"""The transformers head: `FlashHeadLMHead`, the drop-in for a causal LM's `lm_head`, and `apply`,
which puts it in place (with a forward pre-hook that hands it each call's token ids, for the
context-aware probes). hf.py (the user's entry point) and hf_auto.py (the Auto API) both use it.
"""
from __future__ import annotations

import logging

import torch

from ..core.config import FlashHeadError
from ..core.context import with_next
from ..core.dense_rule import DenseRule
from ..core.head import FlashHead
from ..core.index import ClusterIndex

# The dense rule's crossover for transformers' dense head: the fraction of V in stage-2 rows
# (N*P*cs) above which a step runs the dense head. The evidence per entry: docs/KERNELS.md, "Dense rule".
CROSSOVER = {"cpu": 8.0, "cpu/bfloat16": 1.5, "cuda": 0.25}


class FlashHeadLMHead(torch.nn.Module):
    """Drop-in for `nn.Linear(d, V, bias=False)`; `use_flashhead=False` runs the dense product."""

    def __init__(self, linear: torch.nn.Linear, index: ClusterIndex, probes: int | None = None,
                 arrange: bool | None = None):
        super().__init__()
        if getattr(linear, "bias", None) is not None:
            raise FlashHeadError("FlashHead does not support an output head with a bias")
        self.weight = linear.weight  # the same Parameter: state_dict keys and tying are unchanged
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._index, self._probes, self._arrange = index, probes, arrange
        self._build()
        self.use_flashhead = True
        self._held = None       # [B, K] bool: each row's context after the last call (context.py)
        self._calls = None      # [B, K] int32: where the current call's contexts gain each cluster
        self._length = 0        # the current call's positions T
        self._ids = None        # [B, T] the current call's token ids (their next clusters, context.py)

    def _build(self) -> None:
        self.flashhead = FlashHead(self.weight.detach(), self._index, self._probes,  # detach(): shares storage
                                   arrange=self._arrange)
        self.flashhead.rule = DenseRule.measured(CROSSOVER, self.weight)
        if self.flashhead.arranged_bytes:
            logging.getLogger("flashhead").info(
                "FlashHead keeps the head's rows in cluster order: %.0f MiB more (flash_head_arrange="
                "False reads them in place, stage 2 about 2x slower)", self.flashhead.arranged_bytes / 2**20)

    def _apply(self, fn, *args, **kwargs):
        """`model.to(device or dtype)` moves the weight: rebuild FlashHead over the moved tensor."""
        out = super()._apply(fn, *args, **kwargs)
        fh = self.flashhead.weight
        if fh.data_ptr() != self.weight.data_ptr() or fh.dtype != self.weight.dtype:
            probes = self.flashhead.probes
            self._build()
            self.flashhead.probes = probes
        return out

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.use_flashhead:
            return torch.nn.functional.linear(hidden, self.weight)
        # A clear error for broken hidden states. Checked on CPU only: on CUDA the check would
        # be a host sync per step; there NaN propagates into NaN logits instead.
        if hidden.device.type == "cpu" and not torch.isfinite(hidden).all():
            raise FlashHeadError("hidden states contain NaN or infinite values")
        first = self._calls
        if first is not None and hidden.dim() == 3 and hidden.shape[0] == first.shape[0] \
                and hidden.shape[1] <= self._length:
            # the contexts of the positions asked for (generate asks for the last one only)
            at = torch.arange(self._length - hidden.shape[1], self._length, device=first.device)
            ctx = first.unsqueeze(1) <= at.view(1, -1, 1)                   # [B, T', K]
            ctx = with_next(ctx.reshape(-1, first.shape[-1]), self._ids[:, -hidden.shape[1]:],
                            self.flashhead.successors)
            return self.flashhead(hidden, ctx)
        return self.flashhead(hidden)

    def see(self, input_ids: torch.Tensor | None, start: bool) -> None:
        """Called before each model forward (apply's hook): the call's token ids [B, T] and whether
        they start new sequences (cache position 0) or continue the rows of the last call. Each
        position's context is its row's tokens up to and including its own (context.py), so a
        prompt's logits never see a later token. No ids (inputs_embeds) or a batch that changed
        shape: no context for the call."""
        fh = self.flashhead
        if not fh.context_probes or input_ids is None or input_ids.dim() != 2:
            self._held = self._calls = self._ids = None
            return
        b, t = input_ids.shape
        if not start and (self._held is None or self._held.shape[0] != b):
            self._held = self._calls = self._ids = None   # a batch it did not see start (beams, reorder)
            return
        # first[b, k]: the first position of the call holding a token of cluster k (-1: held before)
        first = torch.full((b, fh.num_clusters), t, dtype=torch.int32, device=input_ids.device)
        at = torch.arange(t, dtype=torch.int32, device=input_ids.device).expand(b, t)
        first.scatter_reduce_(1, fh.assignments[input_ids], at, reduce="amin")
        if not start:
            first.masked_fill_(self._held, -1)
        self._calls, self._length, self._held, self._ids = first, t, first < t, input_ids


def apply(model, index: ClusterIndex, probes: int | None = None, arrange: bool | None = None) -> FlashHeadLMHead:
    """Replace the model's output head by FlashHead (in place); returns the new head. `arrange`:
    head.py's (None: a cluster-ordered copy of the rows on the CPU)."""
    head = model.get_output_embeddings()
    if isinstance(head, FlashHeadLMHead):
        raise FlashHeadError("this model already has a FlashHead")
    if not isinstance(head, torch.nn.Linear):
        raise FlashHeadError(f"{type(model).__name__}: output head is {type(head).__name__}, expected nn.Linear")
    new = FlashHeadLMHead(head, index, probes, arrange)
    model.set_output_embeddings(new)
    model.register_forward_pre_hook(_context_hook, with_kwargs=True)
    return new


def _context_hook(model, args, kwargs):
    """Hands each forward's token ids to the FlashHead head (context-aware probes, context.py)."""
    head = model.get_output_embeddings()
    if not isinstance(head, FlashHeadLMHead):
        return None
    ids = kwargs.get("input_ids", args[0] if args else None)
    past = kwargs.get("past_key_values")
    if past is not None and hasattr(past, "get_seq_length"):
        start = past.get_seq_length() == 0                      # a Python int: no device sync
    else:
        pos = kwargs.get("cache_position")
        start = past is None if pos is None or pos.device.type != "cpu" else int(pos.reshape(-1)[0]) == 0
    head.see(ids if isinstance(ids, torch.Tensor) else None, start)
    return None
