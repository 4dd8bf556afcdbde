"""Hidden states of a real transformers model: the input of its output head, position by position.

    teacher_forced(model, tok, texts)    -> H [N, d], next tokens [N]   (real text, for evaluation)
    sampled(model, tok, positions)       -> H [N, d], sampled tokens [N] (the model's own text, for
                                            calibrating a build: no corpus needed, started from
                                            every kind of token in the vocabulary, kinds.py)

`model` is a causal LM (dense or FlashHead head); its body (`model.base_model`) produces the states
after the final norm, and the dense product with the head weight is used wherever a next token is
drawn, so the states never depend on a FlashHead approximation.
"""
from __future__ import annotations

import torch

from ..core.config import FlashHeadError
from .kinds import token_kinds


def _head_weight(model) -> torch.Tensor:
    return model.get_output_embeddings().weight.detach()


@torch.inference_mode()
def teacher_forced(model, tokenizer, texts: list[str], max_positions: int = 4096,
                   max_length: int = 128, inputs: bool = False):
    """Hidden states H [N, d] fp32 and next tokens [N] over `texts`, text after text (one forward
    per text, each truncated to `max_length` tokens), N <= max_positions. (Batching texts with
    padding measured slower on the CPU: 8.0 vs 5.6 s for 40 texts, SmolLM2.) `inputs`: also the
    token at each position [N] and whether it starts a text [N] bool (a text's context, context.py)."""
    body = model.base_model
    hs, ids_ = [], []
    n = 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
        if ids.shape[1] < 2:
            continue
        h = body(input_ids=ids.to(model.device)).last_hidden_state[0, :-1]
        hs.append(h.float().cpu())
        ids_.append(ids[0])
        n += h.shape[0]
        if n >= max_positions:
            break
    if not hs:
        raise FlashHeadError("no text to take hidden states from")
    return positions(hs, ids_, max_positions, inputs)


def positions(hs: list, ids: list, max_positions: int, inputs: bool = False):
    """Texts' hidden states [n_i, d] and token ids [n_i + 1] -> H [N, d], next tokens [N] (and with
    `inputs` the token at each position [N], text starts [N] bool), N <= max_positions."""
    H = torch.cat(hs)[:max_positions]
    y = torch.cat([t[1:] for t in ids])[:max_positions]
    if not inputs:
        return H, y
    x = torch.cat([t[:-1] for t in ids])[:max_positions]
    first = torch.cat([torch.arange(len(t) - 1) == 0 for t in ids])[:max_positions]
    return H, y, x, first


@torch.inference_mode()
def sampled(model, tokenizer, positions: int = 8192, batch: int = 64, length: int = 64,
            temperature: float = 1.0, seed: int = 0, starts: int = 3, accents: bool = False,
            progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own text: `batch` sequences at a time, each up to `length` tokens sampled from
    the dense softmax at `temperature` after BOS and `starts` tokens of one kind (`_start_tokens`;
    0: BOS alone; `accents`: kinds.py's accented-letter kinds too, and at least one sequence per
    kind in every batch); a sequence stops at EOS. Returns H [N, d] fp32 (the state each token was drawn
    from, the last start token's included) and the drawn tokens [N], N = positions, sequence after
    sequence (so a split by position is, but for one sequence, a split by text)."""
    from tqdm.auto import tqdm

    body, weight = model.base_model, _head_weight(model)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise FlashHeadError("the tokenizer has neither a BOS nor an EOS token to start sampling from")
    eos = torch.tensor(sorted(_eos_ids(model, tokenizer)), dtype=torch.int64)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    kinds = list(token_kinds(tokenizer, weight.shape[0], accents).values()) if starts else []
    if accents:
        batch = max(batch, len(kinds))
    gen = torch.Generator().manual_seed(seed)
    hs, ts, seq, n, first = [], [], [], 0, 0
    bar = tqdm(total=positions, desc="sampling calibration text", unit="pos", disable=not progress)
    while n < positions:
        ids = torch.full((batch, 1), start, dtype=torch.int64)
        if kinds:
            ids = torch.cat([ids, _start_tokens(kinds, batch, starts, gen)], 1)
        ids = ids.to(model.device)
        alive = torch.ones(batch, dtype=torch.bool)
        past = None
        for _ in range(length):
            out = body(input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            h = out.last_hidden_state[:, -1]                              # [B, d]
            logits = (h @ weight.T).float()                               # [B, V] dense
            if softcap:
                logits = softcap * torch.tanh(logits / softcap)
            nxt = _draw(logits.cpu() / temperature, gen)                  # [B]
            hs.append(h.float().cpu()[alive])
            ts.append(nxt[alive])
            seq.append(first + torch.nonzero(alive).squeeze(1))
            n += int(alive.sum())
            bar.update(int(alive.sum()))
            alive &= ~torch.isin(nxt, eos)
            if n >= positions or not alive.any():
                break
            ids = nxt.unsqueeze(1).to(model.device)
        first += batch
    bar.close()
    order = torch.argsort(torch.cat(seq), stable=True)[:positions]       # sequence-major
    return torch.cat(hs)[order], torch.cat(ts)[order]


def _start_tokens(kinds: list[torch.Tensor], batch: int, starts: int, gen: torch.Generator) -> torch.Tensor:
    """[batch, starts]: row b holds `starts` tokens drawn uniformly from one kind (kinds: each a
    tensor of token ids), the kinds taken in turn in a shuffled cycle, so a batch starts every kind
    alike."""
    cycle = torch.randperm(len(kinds), generator=gen).repeat(-(-batch // len(kinds)))[:batch]
    return torch.stack([kinds[k][torch.randint(len(kinds[k]), (starts,), generator=gen)] for k in cycle.tolist()])


def _draw(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row of logits [B, V], drawn from its softmax by inverting the cumulative sum of
    exp(logits - max) (float64) at a uniform draw scaled by the total: no normalised copy.
    (torch.multinomial: 0.55 s per [64, 262,144] call on the 2-core host, 17.5 s of a Gemma-3-270M
    build; this: 0.05 s.)"""
    cdf = (logits - logits.amax(1, keepdim=True)).exp_().double().cumsum_(1)
    u = torch.rand(logits.shape[0], 1, generator=gen, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max_(logits.shape[1] - 1)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        e = getattr(src, "eos_token_id", None)
        ids |= set(e) if isinstance(e, (list, tuple)) else ({e} if e is not None else set())
    return ids
