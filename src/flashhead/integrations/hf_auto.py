"""FlashHead model types for transformers' Auto API (registered by importing integrations.hf).

A FlashHead directory's config.json says `"model_type": "flashhead_<base>"` (layout.py), so a
transformers without flashhead stops ("does not recognize this architecture") instead of loading
the dense head. Here a base model type gets

    FlashHead<BaseConfig>(<BaseConfig>)      model_type "flashhead_<base>"
    FlashHead<Arch>(<Arch>)                  from_pretrained: the base weights, then hf.apply(...)

registered with AutoConfig / AutoModelForCausalLM, so `AutoModelForCausalLM.from_pretrained(dir)`
and `pipeline("text-generation", model=dir)` give a FlashHead model, and `save_pretrained(out)`
writes a complete FlashHead directory (weights, config, flash_head_assets/, a model-card section).
`EAGER` are registered at import; `classes()` registers any other causal LM type on demand.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..core.config import FlashHeadError
from ..core.layout import (ARCH_PREFIX, BASE_TYPE_KEY, CACHE_KEY, PUBLISHED_PROBES, TYPE_PREFIX, assets_dir, load_assets)
from .hf_head import FlashHeadLMHead, apply
from ..build.model_card import write_section
from ..core.index import ClusterIndex, JSON_FILE, TENSORS_FILE, check_fingerprint

EAGER = ("llama", "gemma3_text", "qwen3")   # the families tested (Llama, Gemma3, Qwen3)
PROBES_KEY = "flash_head_probes"   # as in the vLLM plugin: from_pretrained(dir, flash_head_probes=64)
# False: stage 2 reads the head's rows in place, no cluster-ordered copy (head.py `arrange`)
ARRANGE_KEY = "flash_head_arrange"
_classes: dict[str, tuple[type, type]] = {}


def classes(base_type: str) -> tuple[type, type]:
    """(FlashHead causal LM class, its dense base class) for a base model_type, registered."""
    if base_type in _classes:
        return _classes[base_type]
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        base_config = CONFIG_MAPPING[base_type]
        base_model = MODEL_FOR_CAUSAL_LM_MAPPING[base_config]
    except KeyError:
        raise FlashHeadError(f"transformers has no causal LM for model type {base_type!r}") from None
    config_class = _subclass(base_config, model_type=TYPE_PREFIX + base_type)
    model_class = _subclass(base_model, config_class=config_class,
                            from_pretrained=classmethod(_from_pretrained), save_pretrained=_save_pretrained)
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
    _classes[base_type] = model_class, base_model
    return _classes[base_type]


def _subclass(base: type, **attrs) -> type:
    name = ARCH_PREFIX + base.__name__
    cls = type(name, (base,), {"__module__": __name__, "__qualname__": name, **attrs})
    globals()[name] = cls   # importable by name: vLLM and multiprocessing pickle config instances
    return cls


def _dense_base(cls) -> type:
    return next(c for c in cls.__mro__ if not c.__name__.startswith(ARCH_PREFIX))


def _from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
    probes = kwargs.pop(PROBES_KEY, None)
    arrange = kwargs.pop(ARRANGE_KEY, None)
    model = _dense_base(cls).from_pretrained.__func__(cls, pretrained_model_name_or_path, *args, **kwargs)
    assets = _assets(pretrained_model_name_or_path, model.config, kwargs)
    index = load_assets(assets.parent) if Path(pretrained_model_name_or_path).is_dir() else \
        ClusterIndex.load(assets, getattr(model.config, PUBLISHED_PROBES, None))
    apply(model, index, probes if probes is not None else getattr(model.config, PROBES_KEY, None),
          arrange if arrange is not None else getattr(model.config, ARRANGE_KEY, None))
    model._flash_head_assets = assets
    if getattr(model.config, BASE_TYPE_KEY, None) is None:   # a directory built before the key
        setattr(model.config, BASE_TYPE_KEY, _dense_base(cls).config_class.model_type)
    return model


def _assets(path, config, kwargs) -> Path:
    """The directory's flash_head_assets/ (a local directory, or fetched from the Hub)."""
    folder = getattr(config, CACHE_KEY, None)
    if folder is None:
        raise FlashHeadError(f"{path}: config has no {CACHE_KEY}: not a FlashHead model directory")
    if Path(path).is_dir():
        return Path(path) / folder
    from transformers.utils import cached_file

    hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    tensors = cached_file(path, f"{folder}/{TENSORS_FILE}", **hub)
    cached_file(path, f"{folder}/{JSON_FILE}", _raise_exceptions_for_missing_entries=False, **hub)  # published: none
    return Path(tensors).parent


def _save_pretrained(self, save_directory, *args, **kwargs):
    """The base's save_pretrained, then the assets (checked against the head being saved: a
    changed head invalidates them) and a FlashHead model-card section in README.md."""
    head, src = self.get_output_embeddings(), getattr(self, "_flash_head_assets", None)
    if not isinstance(head, FlashHeadLMHead) or src is None:
        raise FlashHeadError("save_pretrained: this model has no FlashHead (load it with "
                             "from_pretrained on a FlashHead directory)")
    index = ClusterIndex.load(src)
    check_fingerprint(index.fingerprint, head.weight.detach(),
                      "save_pretrained: the head changed since its FlashHead assets were built")
    _dense_base(type(self)).save_pretrained(self, save_directory, *args, **kwargs)
    out = Path(save_directory)
    dst = assets_dir(out)            # from the config.json just written (flash_head_cache_dir)
    if Path(src).resolve() != dst.resolve():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    write_section(out / "README.md", index)


for _t in EAGER:
    classes(_t)
