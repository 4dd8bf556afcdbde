"""Token choice from full-vocabulary logits: greedy, or temperature / top-k / top-p sampling with a
seeded generator (the same seed gives the same tokens). For runtimes that hand flashhead the loop
(llama.cpp); transformers and vLLM use their own samplers on the same logits."""
from __future__ import annotations

import torch

from .config import FlashHeadError


class Sampler:
    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 seed: int | None = None):
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise FlashHeadError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.greedy = temperature == 0
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> token ids [B]."""
        if self.greedy:
            return logits.argmax(-1)
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
        return torch.multinomial(x.softmax(-1), 1, generator=self.generator).squeeze(-1)
