"""FlashHeadConfig: the one object describing how a head is clustered and probed.

Saved as `flash_head_assets/flashhead.json` next to the clustering tensors; validated on
construction so a bad value fails at the call that made it, with a one-line message.
"""
from __future__ import annotations

import dataclasses

FORMAT_VERSION = 1
QUANTIZATIONS = ("none", "int8", "int4")
STAGE1 = ("mean", "cosine")


class FlashHeadError(ValueError):
    """A user-facing error: bad assets, bad flags, mismatched model. One line, no traceback needed."""


@dataclasses.dataclass
class FlashHeadConfig:
    # 16 tokens per cluster: the paper's choice; one cluster is 16 rows = one contiguous block
    # of 16*d values, long enough for full-bandwidth reads on CPU and GPU.
    cluster_size: int = 16
    # Clusters probed per decode step (stage 2 scores probes*cluster_size exact logits). A build
    # replaces it by the count that reaches the target agreement (build.TARGET_AGREEMENT).
    probes: int = 256
    # Token ids scored exactly at every step whatever the probes: the tokens that end a turn or a
    # sequence (EOS, end of turn, the chat template's control tokens), so that a reply ends where
    # the dense head ends it. A few rows: no measurable cost. A build fills it from the tokenizer.
    exact_tokens: list = dataclasses.field(default_factory=list)
    # Stage-1 (centroid) storage: "none" keeps the head's dtype, int8/int4 use per-row scales.
    # int8: a quarter of fp32 bytes, no measured loss of agreement (docs/FIDELITY.md).
    quantization: str = "int8"
    # Stage-1 score: "mean" (our builds) h . c_k with c_k the members' usage-weighted mean, so s_k is
    # a cluster logit the estimate starts from; "cosine" (published FlashHead checkpoints) h . c_k/|c_k|,
    # ranking only: the estimate then starts from the members' plain mean (head.py). Clusters of a
    # "cosine" index may be unequal (cluster_size is the largest; shorter ones are padded).
    stage1: str = "mean"
    # Balanced k-means build parameters. Refinement rounds: 4 and 8 agree at equal probes on every
    # eval domain within the noise (experiments/build_recipe.py; SmolLM2 P = 287: legal 97.75% vs
    # 97.88%, the rest within 0.1 point; docs/FIDELITY.md); rounds 5-8 cost Gemma-3-270M's build
    # ~45 s on 2 cores.
    iterations: int = 4
    seed: int = 0
    version: int = FORMAT_VERSION
    # Context-aware probes (context.py): of the P probes, the most that go to the clusters of the
    # tokens a sequence already holds. None: the library's default share of P (context.SHARE);
    # 0: off. Not written to flashhead.json unless set.
    context_probes: int | None = None

    def __post_init__(self):
        if not isinstance(self.cluster_size, int) or self.cluster_size < 1:
            raise FlashHeadError(f"cluster_size must be a positive integer, got {self.cluster_size!r}")
        if not isinstance(self.probes, int) or self.probes < 1:
            raise FlashHeadError(f"probes must be a positive integer, got {self.probes!r}")
        if not isinstance(self.exact_tokens, (list, tuple)) or not all(
                isinstance(t, int) and t >= 0 for t in self.exact_tokens):
            raise FlashHeadError(f"exact_tokens must be a list of token ids, got {self.exact_tokens!r}")
        self.exact_tokens = sorted(set(self.exact_tokens))
        if self.quantization not in QUANTIZATIONS:
            raise FlashHeadError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.stage1 not in STAGE1:
            raise FlashHeadError(f"stage1 must be one of {STAGE1}, got {self.stage1!r}")
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise FlashHeadError(f"iterations must be a non-negative integer, got {self.iterations!r}")
        if self.context_probes is not None and (not isinstance(self.context_probes, int) or self.context_probes < 0):
            raise FlashHeadError(f"context_probes must be a non-negative integer or null, got {self.context_probes!r}")
        if self.version != FORMAT_VERSION:
            raise FlashHeadError(f"flashhead.json format version {self.version} is not supported "
                                 f"(this library reads version {FORMAT_VERSION})")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["context_probes"] is None:
            del d["context_probes"]       # the library's default: readers that predate it still load
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "FlashHeadConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise FlashHeadError(f"unknown FlashHead config keys: {', '.join(unknown)}")
        return cls(**data)
