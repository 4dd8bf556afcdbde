"""Next clusters: for every token, the clusters the model's next token is in after that token alone.

On text no build saw, the fast mode's misses are tokens new to the text (the context holds the
ones it has seen, context.py) whose clusters stage 1 ranks far beyond P. Much of what follows a
token is decided by the token itself (the rest of a word, a syllable, a script): the model read on
[BOS, x] alone and scored by the dense head ranks the cluster of what follows x near the top where
stage 1, on the real state, ranks it in the thousands. So the build stores, per token x, the
clusters of the dense head's best tokens at that state (in the order of their best member, the
first NEXT_CLUSTERS of them), and at each step the clusters of the token a sequence has just read
join its context for that step (context.py `with_next`): they compete for the same E context
probes, the bytes of a step are unchanged.

Measured (docs/FIDELITY.md, "Next clusters"; experiments/next_clusters.py and next_count.py):
on the languages check Gemma-3-270M gains with every count up to 32 at E = 192; SmolLM2-135M, at
E = 36, loses where 32 crowd out the held clusters: a step uses E / 6 of them
(core/context.py `next_count`).

Cost: one body step (after a shared [BOS]) and one dense head product per vocabulary token,
batched; bf16 where the CPU has it (AVX-512 BF16), else fp32. On a 2-core AVX2 host in fp32,
sharing the cores with another job: 5,612 of Gemma-3-270M's 262,144 tokens in 185 s (the whole
vocabulary: hours; an opt-in for that reason), SmolLM2-135M's 49,152 in 16 minutes (252 s with
the cores to itself: `FLASHHEAD_CACHE=$(mktemp -d) flashhead upgrade DIR --next-clusters --json`,
the build record's next_clusters.seconds). The best
tokens are kept in the cache, so other builds of the same model only map them to their own
clusters.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.cache import cache_root
from ..core.index import fingerprint

NEXT_CLUSTERS = 32   # stored per token (Gemma-3-270M still gains at 32, E = 192: docs/FIDELITY.md)
NEXT_TOKENS = 128    # the dense head's best tokens kept per state; their clusters, in order, are the next clusters
BATCH = 512


def _dtype(device: torch.device) -> torch.dtype:
    """bf16 body and products where the hardware has them (the ranking only needs the order of the
    top tokens: bf16 and fp32 states gave the same agreement), else fp32."""
    if device.type == "cuda" or (device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()):
        return torch.bfloat16
    return torch.float32


@torch.inference_mode()
def next_tokens(model, tokenizer, count: int = NEXT_TOKENS, batch: int = BATCH, progress: bool = True,
                ids: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[V, count] int32: per token x, the dense head's best `count` tokens, best first, at the model's
    state after [BOS, x] (`ids` given: [len(ids), count], for those tokens only). `model`: a
    transformers causal LM with its dense head; `dtype`: of the body and products (default: _dtype)."""
    from tqdm.auto import tqdm

    weight = model.get_output_embeddings().weight.detach()
    v = weight.shape[0]
    count = min(count, v)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    body = model.base_model
    device = weight.device
    dtype = dtype or _dtype(device)
    saved = next(body.parameters()).dtype
    body.to(dtype)
    w = weight.to(dtype)
    ids = torch.arange(v) if ids is None else torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
    out = torch.empty(ids.numel(), count, dtype=torch.int32)
    try:
        for s in tqdm(range(0, ids.numel(), batch), desc="next tokens", unit="batch", disable=not progress):
            x = ids[s:s + batch].to(device)
            # [BOS] once, its cache repeated over the batch: the body then reads one position per
            # token (the same states as [BOS, x] read whole, up to rounding: tests/test_context_models.py)
            cache = body(input_ids=torch.tensor([[start]], device=device), use_cache=True).past_key_values
            cache.batch_repeat_interleave(x.numel())
            h = body(input_ids=x[:, None], past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
            out[s:s + x.numel()] = (h @ w.T).topk(count, 1).indices.to(torch.int32).cpu()
    finally:
        body.to(saved)
    return out


def clusters_of(tokens: torch.Tensor, assignments: torch.Tensor, count: int = NEXT_CLUSTERS,
                chunk: int = 16384) -> torch.Tensor:
    """tokens [V, N] (best first) -> [V, count] int64: per row the first `count` distinct clusters of
    its tokens, in their order (the clusters ranked by their best member's logit); a row with fewer
    distinct clusters repeats its own (a repeat adds nothing to a mask)."""
    out = []
    a = assignments.to(torch.int64)
    for s in range(0, tokens.shape[0], chunk):
        c = a[tokens[s:s + chunk].long()]                                     # [n, N]
        n, m = c.shape
        v, order = torch.sort(c, dim=1, stable=True)
        first = torch.ones_like(v, dtype=torch.bool)
        first[:, 1:] = v[:, 1:] != v[:, :-1]                                  # first of a run of equals
        is_first = torch.zeros_like(first).scatter_(1, order, first)          # ... at its place in c
        pos = torch.arange(m).expand(n, m)
        key = torch.where(is_first, pos, pos + m)                             # distinct first, in order
        out.append(c.gather(1, key.argsort(1)[:, :min(count, m)]))
    return torch.cat(out)


def cached_next_tokens(model_dir, model, tokenizer, progress: bool = True) -> torch.Tensor:
    """next_tokens for the model in `model_dir`, made once and kept in the cache
    ($FLASHHEAD_CACHE/next-tokens/, keyed by the head's fingerprint and the weight files' sizes):
    builds of one model (left-out builds, a rebuild at other probes) share it."""
    weight = model.get_output_embeddings().weight.detach().float()
    files = sorted((p.name, p.stat().st_size) for p in Path(model_dir).glob("*.safetensors"))
    key = hashlib.sha256(json.dumps([fingerprint(weight), files, NEXT_TOKENS]).encode()).hexdigest()[:20]
    path = cache_root() / "next-tokens" / f"{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["next_tokens"]
    t = next_tokens(model, tokenizer, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"next_tokens": t.contiguous()}, str(tmp))
    tmp.replace(path)
    return t
