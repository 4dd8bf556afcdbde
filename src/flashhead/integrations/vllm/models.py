"""FlashHead<Arch> architectures: vLLM's own model classes under the FlashHead name.

A FlashHead directory names `FlashHead<Arch>` in config.json so that a stack without this plugin
refuses it instead of silently running dense. The classes add nothing: the head swap happens in
the LogitsProcessor (logits.py), keyed on the directory's config, not on the class.
"""
from __future__ import annotations

from ...core.layout import TYPE_PREFIX

# FlashHead arch -> (vLLM module, vLLM class)
BASES = {
    "FlashHeadLlamaForCausalLM": ("vllm.model_executor.models.llama", "LlamaForCausalLM"),
    "FlashHeadQwen3ForCausalLM": ("vllm.model_executor.models.qwen3", "Qwen3ForCausalLM"),
    "FlashHeadGemma3ForCausalLM": ("vllm.model_executor.models.gemma3", "Gemma3ForCausalLM"),
}


def __getattr__(name: str):
    """Lazily build `FlashHead<Arch>` as a subclass of vLLM's class (imported on first use)."""
    if name not in BASES:
        raise AttributeError(name)
    import importlib

    module, cls = BASES[name]
    base = getattr(importlib.import_module(module), cls)
    sub = type(name, (base,), {"__module__": __name__, "__qualname__": name})
    globals()[name] = sub
    return sub


def register_architectures() -> None:
    from vllm import ModelRegistry

    for arch in BASES:
        ModelRegistry.register_model(arch, f"{__name__}:{arch}")


def register_model_types() -> None:
    """transformers' AutoConfig must map `flashhead_<base>` before vLLM reads config.json: the
    FlashHead config classes of the transformers integration (subclasses of the base configs)."""
    from .. import hf_auto

    # vLLM refuses float16 for some base types (numerical instability: Gemma3), keyed by model_type:
    # the same refusal for their FlashHead types
    try:
        from vllm.config.model import _FLOAT16_NOT_SUPPORTED_MODELS as refused
    except ImportError:
        return
    for base in hf_auto.EAGER:
        if base in refused:
            refused.setdefault(TYPE_PREFIX + base, refused[base])
