"""lm-evaluation-harness integration: the `flashhead` model (lm-eval 0.4.13; `pip install flashhead[lmeval]`).

    flashhead lm-eval --model flashhead --model_args pretrained=DIR[,probes=N][,dense=True] --tasks ...

or in Python (importing this module registers the model with lm-eval's registry):

    import flashhead.integrations.lmeval, lm_eval
    lm_eval.simple_evaluate(model="flashhead", model_args="pretrained=DIR", tasks=[...])

`FlashHeadLM` is lm-eval's HFLM on a model loaded by `integrations.hf.load` (fp32 by default), with
its own teacher-forced scoring (`loglikelihood`, `loglikelihood_rolling`): the continuation's
tokens are known, so each is scored exactly (its row joins stage 2: `FlashHead.score`) and only
the normaliser, a logsumexp over FlashHead's logits with that token exact, carries estimates;
`is_greedy` compares with FlashHead's own greedy token. Only the continuation's positions go
through the head. `dense=True` loads the same directory with its dense head, scored by the same
code (the reference). `generate_until` is HFLM's, on `generate()` with FlashHead's logits.
FlashHead runs at every batch size here (the dense rule off): the scores measure FlashHead itself,
as it decodes.

`--model hf` on a FlashHead directory loads it through transformers' Auto API: a FlashHead model
once `flashhead.integrations.hf` is imported (HFLM's own scoring: logits for every position, the
dense rule on), a refusal from transformers otherwise.
"""
from __future__ import annotations

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ..core.config import FlashHeadError
from . import hf


@register_model("flashhead")
class FlashHeadLM(HFLM):
    def __init__(self, pretrained: str, probes: int | None = None, dense: bool = False,
                 dtype: str = "float32", device: str | None = None, **kwargs):
        if not isinstance(pretrained, str):
            raise FlashHeadError("flashhead: pretrained must be a FlashHead model directory")
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cpu"                               # as HFLM: lm-eval's CLI passes cuda by default
        model, tok = hf.load(pretrained, dense=bool(dense), probes=None if probes is None else int(probes),
                             dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype, device=device)
        self.flashhead = None if dense else model.get_output_embeddings().flashhead
        if self.flashhead is not None:
            self.flashhead.dense_above = None          # FlashHead at every batch size
        if getattr(model.config, "final_logit_softcapping", None):
            raise FlashHeadError("flashhead lm-eval: models with final_logit_softcapping are not supported")
        super().__init__(pretrained=model, tokenizer=tok, backend="causal", **kwargs)
        self.pretrained = pretrained

    def get_model_info(self) -> dict:
        head = self.flashhead
        return {"model_dir": self.pretrained, "head": "dense" if head is None else "flashhead",
                "probes": None if head is None else head.probes,
                "clusters": None if head is None else head.num_clusters}

    def _score(self, h: torch.Tensor, targets: torch.Tensor):
        """h [M, d], targets [M] -> (log-probabilities [M], greedy tokens [M])."""
        if self.flashhead is not None:
            return self.flashhead.score(h, targets)
        logits = torch.nn.functional.linear(h, self.model.get_output_embeddings().weight).float()
        return logits.log_softmax(1).gather(1, targets[:, None]).squeeze(1), logits.argmax(1)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        """[(cache key, context ids, continuation ids)] -> [(log-likelihood, is_greedy)], as HFLM's
        (the same left truncation to max_length + 1 tokens, longest first, cache partials), but
        only the continuation's positions go through the head."""
        bs = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 16)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        decoder, res = self.model.get_decoder(), [None] * len(requests)
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            seqs = [(requests[i][1] + requests[i][2])[-(self.max_length + 1):] for i in idx]
            conts = [len(requests[i][2]) for i in idx]
            inp = torch.zeros(len(idx), max(map(len, seqs)) - 1, dtype=torch.long)
            tgt, mask = torch.zeros_like(inp), torch.zeros(inp.shape, dtype=torch.bool)
            for r, (q, c) in enumerate(zip(seqs, conts)):
                inp[r, :len(q) - 1], tgt[r, :len(q) - 1] = torch.tensor(q[:-1]), torch.tensor(q[1:])
                mask[r, len(q) - 1 - c:len(q) - 1] = True        # right padding: causal, never seen
            h = decoder(input_ids=inp.to(self.device)).last_hidden_state[mask.to(self.device)]
            logp, greedy = self._score(h, tgt.to(self.device)[mask.to(self.device)])
            hit = (greedy == tgt.to(self.device)[mask.to(self.device)])
            for i, lp, ok in zip(idx, logp.cpu().split(conts), hit.cpu().split(conts)):
                res[i] = (float(lp.double().sum()), bool(ok.all()))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], res[i])
        return res
