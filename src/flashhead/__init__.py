"""flashhead: replace a language model's dense output head with two-stage cluster retrieval.

Core (torch only): `balanced_kmeans`, `ClusterIndex`, `FlashHead`, `FlashHeadConfig`.
Integrations and tools are imported lazily from their modules (`flashhead.integrations.hf`,
`flashhead.build`, ...) so that `import flashhead` stays light and touches no GPU.
"""
__version__ = "0.1.0"

from .core.config import FlashHeadConfig, FlashHeadError
from .build.clustering import balanced_kmeans
from .core.index import ClusterIndex
from .core.head import FlashHead



def load(model_dir, backend: str = "auto", **kwargs):
    """Open a FlashHead model directory on a backend (llama.cpp or transformers) -> a Model with
    `generate(prompts, mode="fast" | "exact" | "dense", ...)` (tools/model.py)."""
    from .tools.model import load as _load

    return _load(model_dir, backend, **kwargs)


__all__ = ["load", "FlashHead", "FlashHeadConfig", "FlashHeadError", "ClusterIndex", "balanced_kmeans", "__version__"]
