"""Token choice from full-vocabulary logits: greedy, or temperature / top-k / top-p sampling with a
seeded generator (the same seed gives the same tokens). The one sampler of flashhead's generate
loop (tools/engine.py), for every backend; transformers' and vLLM's own loops use their samplers
on the same logits.

`warp` turns logits into the distribution a token is drawn from (temperature, then top-k, then
top-p): verified decoding's speculative sampling warps FlashHead's logits (the proposal) and the
dense head's (the target) alike, so the tokens it returns are distributed as `draw(warp(dense))`.
"""
from __future__ import annotations

import torch

from .config import FlashHeadError


def check(temperature: float, top_p: float, top_k: int) -> None:
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise FlashHeadError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")


class Sampler:
    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 seed: int | None = None):
        check(temperature, top_p, top_k)
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.greedy = temperature == 0
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def warp(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> probabilities [B, V] fp32 of the tokens sampling draws (zero outside
        top-k / top-p). Not for greedy."""
        x = logits.float() / self.temperature
        if self.top_k:
            kth = x.topk(min(self.top_k, x.shape[-1]), dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p < 1:
            srt, order = x.sort(dim=-1, descending=True)
            p = srt.softmax(-1)
            worse = (p.cumsum(-1) - p) >= self.top_p       # the better tokens already hold top_p
            drop = torch.zeros_like(worse).scatter(-1, order, worse)
            x = x.masked_fill(drop, float("-inf"))
        return x.softmax(-1)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per row of probabilities [B, V] (need not sum to 1) -> [B]."""
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.generator)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> token ids [B]."""
        if self.greedy:
            return logits.argmax(-1)
        return self.draw(self.warp(logits))
