"""The transformers backend: a causal LM's body in PyTorch, one cache per sequence.

The body (`model.base_model`) gives the final normed hidden states, the head's input; the dense
head is the product with the model's own head weight (`dense_logits`, with the model's final logit
soft-cap if it has one). Each sequence keeps its own `DynamicCache` of full layers (no sliding-window
eviction: the model's masks apply the window), so `cut` is an exact crop whatever the sequence's
length, and a sequence's hidden states never depend on the other sequences (no padding).

Sequences of a step that sit at the same cache length are decoded in one batched forward (their
caches stacked, then split back): a batch of prompts of equal length decodes as one batch, as
`model.generate` would; sequences at different lengths run one after another.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from ..core.config import FlashHeadError
from . import Entry, chat_text


class TransformersBackend:
    """`model`: a causal LM (dense head or FlashHead `lm_head`), `tokenizer` its tokenizer;
    `max_sequences`: sequence ids 0 .. max_sequences-1; `n_ctx`: positions per sequence (default:
    the model's `max_position_embeddings`)."""

    name = "transformers"

    def __init__(self, model, tokenizer, max_sequences: int = 8, n_ctx: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.body = model.base_model
        self.weight = model.get_output_embeddings().weight.detach()
        self.vocab, self.hidden = self.weight.shape
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.trained_ctx = getattr(model.config, "max_position_embeddings", None) or 2048
        self.n_ctx = n_ctx or self.trained_ctx
        self.max_sequences = max_sequences
        self.threads = torch.get_num_threads()
        self.device = self.weight.device
        self._group: dict[int, _Group] = {}    # sequence -> the group whose batched cache holds it

    def close(self) -> None:
        self._group.clear()

    # ---- text <-> tokens -------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def end_tokens(self) -> set[int]:
        ids = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            e = getattr(src, "eos_token_id", None)
            ids |= set(e) if isinstance(e, (list, tuple)) else ({e} if e is not None else set())
        return ids

    def chat_tokens(self, prompt: str) -> list[int]:
        return self.tokenize(chat_text(self.tokenizer, prompt), add_special=False)

    # ---- the body --------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, entries: list[Entry], logits: bool = False) -> torch.Tensor:
        """Hidden states [n_outputs, d] fp32 of the output entries, in the entries' order (or the
        dense logits [n_outputs, V] with `logits`). A sequence's entries must continue its cache:
        consecutive positions from its current length."""
        if not entries:
            raise FlashHeadError("decode needs at least one entry")
        runs: dict[int, list[tuple[int, Entry]]] = defaultdict(list)
        for i, e in enumerate(entries):
            runs[e.seq].append((i, e))
        for seq, run in runs.items():
            if not 0 <= seq < self.max_sequences:
                raise FlashHeadError(f"sequence id {seq} outside 0..{self.max_sequences - 1}")
            start = self.length(seq)
            pos = [e.position for _, e in run]
            if pos != list(range(start, start + len(pos))):
                raise FlashHeadError(f"sequence {seq}: positions {pos[0]}..{pos[-1]} do not continue its "
                                     f"cache of {start}")
            if start + len(pos) > self.n_ctx:
                raise FlashHeadError(f"sequence {seq} would hold {start + len(pos)} positions, more than "
                                     f"the context ({self.n_ctx})")
        out = [None] * len(entries)
        for group in self._plan(runs):
            ids = torch.tensor([[e.token for _, e in runs[s]] for s in group.seqs], device=self.device)
            start = group.cache.get_seq_length()
            positions = torch.arange(start, start + ids.shape[1], device=self.device).expand(ids.shape[0], -1)
            h = self.body(input_ids=ids, position_ids=positions, past_key_values=group.cache,
                          use_cache=True).last_hidden_state
            for b, s in enumerate(group.seqs):
                for j, (i, e) in enumerate(runs[s]):
                    if e.output:
                        out[i] = h[b, j]
        states = [x for x in out if x is not None]
        if not states:
            return torch.empty(0, self.vocab if logits else self.hidden)
        h = torch.stack(states)
        return self.dense_logits(h) if logits else h.float()

    def _plan(self, runs: dict) -> list["_Group"]:
        """The batched forwards of one step: a group whose every sequence takes part with the same
        number of tokens runs as it is; others are split into single sequences; new sequences and
        single ones at the same (length, tokens) are joined into one group (their caches stacked
        once, then kept together)."""
        from transformers import DynamicCache

        for group in {id(g): g for g in self._group.values()}.values():
            shapes = {len(runs[s]) if s in runs else -1 for s in group.seqs}
            if len(group.seqs) > 1 and (len(shapes) > 1 or -1 in shapes):
                self._split(group)
        plan, single = [], defaultdict(list)
        for seq in runs:
            g = self._group.get(seq)
            if g is not None and len(g.seqs) > 1:
                if seq == g.seqs[0]:
                    plan.append(g)
                continue
            single[(self.length(seq), len(runs[seq]))].append(seq)
        for (length, _), seqs in single.items():
            if len(seqs) == 1 and seqs[0] in self._group:
                plan.append(self._group[seqs[0]])
                continue
            cache = DynamicCache() if length == 0 else _stack([self._group[s].cache for s in seqs])
            g = _Group(list(seqs), cache)
            for s in seqs:
                self._group[s] = g
            plan.append(g)
        return plan

    def _split(self, group: "_Group") -> None:
        for s, c in zip(group.seqs, _split(group.cache, len(group.seqs))):
            self._group[s] = _Group([s], c)

    def length(self, seq: int) -> int:
        """Positions sequence `seq` holds in its cache."""
        g = self._group.get(seq)
        return 0 if g is None else g.cache.get_seq_length()

    def cut(self, seq: int, position: int) -> None:
        """Drop sequence `seq`'s cache from `position` on."""
        g = self._group.get(seq)
        if g is None:
            return
        drop = g.cache.get_seq_length() - position
        if drop <= 0:
            return
        if len(g.seqs) > 1:
            self._split(g)
            g = self._group[seq]
        if position == 0:
            del self._group[seq]
        else:
            g.cache.crop(-drop)

    def free(self, seq: int) -> None:
        """Forget sequence `seq`."""
        g = self._group.pop(seq, None)
        if g is not None and len(g.seqs) > 1:
            i = g.seqs.index(seq)
            keep = [j for j in range(len(g.seqs)) if j != i]
            g.cache.batch_select_indices(torch.tensor(keep, device=self.device))
            g.seqs.pop(i)

    def reset(self) -> None:
        self._group.clear()

    def hidden_states(self, tokens: list[int]) -> torch.Tensor:
        """The final normed hidden state [len(tokens), d] at every position of one sequence."""
        self.reset()
        h = self.decode([Entry(t, p, 0, True) for p, t in enumerate(tokens)])
        self.reset()
        return h

    # ---- the head --------------------------------------------------------------------------------

    def head_weight(self) -> torch.Tensor:
        return self.weight

    @torch.inference_mode()
    def dense_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The dense head's logits [N, V] fp32 (the model's soft-cap applied if it has one)."""
        z = torch.nn.functional.linear(h.to(device=self.device, dtype=self.weight.dtype), self.weight).float()
        if self.softcap:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z

    def dense_argmax(self, h: torch.Tensor) -> torch.Tensor:
        return self.dense_logits(h).argmax(1)

    def memory(self, head=None) -> dict:
        if head is None:
            return {"flashhead_extra_bytes": 0}
        # its index and its copy of the rows in cluster order
        return {"flashhead_extra_bytes": sum(b.numel() * b.element_size() for b in head.buffers())
                + head.arranged_bytes}


class _Group:
    """Sequences at the same length whose caches are one batched DynamicCache (in `seqs` order)."""

    def __init__(self, seqs: list[int], cache):
        self.seqs, self.cache = seqs, cache


def _stack(caches):
    """One DynamicCache holding several sequences' caches of equal length (batch dimension)."""
    from transformers import DynamicCache

    out = DynamicCache()
    for i in range(len(caches[0].layers)):
        k = torch.cat([c.layers[i].keys for c in caches])
        v = torch.cat([c.layers[i].values for c in caches])
        out.update(k, v, i)
    return out


def _split(cache, n: int):
    """The per-sequence DynamicCaches of a batched one."""
    from transformers import DynamicCache

    outs = [DynamicCache() for _ in range(n)]
    for i, layer in enumerate(cache.layers):
        for b, c in enumerate(outs):
            c.update(layer.keys[b:b + 1].clone(), layer.values[b:b + 1].clone(), i)
    return outs
