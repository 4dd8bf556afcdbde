"""The FlashHead model directory: a normal model directory plus the assets and a marked config.

    config.json                      "architectures": ["FlashHead<Arch>"], "flash_head_cache_dir":
                                     "flash_head_assets" (CACHE_KEY), "model_type":
                                     "flashhead_<base>" (TYPE_PREFIX; plain transformers refuses
                                     it instead of loading the dense head), the base model_type
                                     in "flash_head_base_model_type" (BASE_TYPE_KEY)
    *.safetensors                    the model's weights (the head read by read_head_weight)
    flash_head_assets/               the ClusterIndex (index.py; published checkpoints' layout too)

`load_assets(model_dir)` is the one way to find and load a directory's assets.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import FlashHeadError
from .index import ASSETS_DIR, ClusterIndex

ARCH_PREFIX = "FlashHead"
CACHE_KEY = "flash_head_cache_dir"
# optional keys of published FlashHead checkpoints' config.json (read when there is no flashhead.json)
PUBLISHED_PROBES, PUBLISHED_CLUSTERS = "n_probes", "n_clusters"
TYPE_PREFIX = "flashhead_"
BASE_TYPE_KEY = "flash_head_base_model_type"


def base_model_type(config: dict) -> str | None:
    """The base model_type of a (FlashHead) config.json: directories built before TYPE_PREFIX
    kept the base's own model_type."""
    mt = config.get("model_type")
    return config.get(BASE_TYPE_KEY) or (mt.removeprefix(TYPE_PREFIX) if isinstance(mt, str) else None)


def mark_config(config: dict, arch: str) -> dict:
    """config.json of a FlashHead directory built from a model with this config and architecture."""
    base = base_model_type(config)
    if not base:
        raise FlashHeadError("config.json names no model_type")
    return {**config, "architectures": [ARCH_PREFIX + arch], "model_type": TYPE_PREFIX + base,
            BASE_TYPE_KEY: base, CACHE_KEY: ASSETS_DIR}


def base_architecture(config: dict) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise FlashHeadError("config.json names no architecture")
    arch = archs[0]
    return arch[len(ARCH_PREFIX):] if arch.startswith(ARCH_PREFIX) else arch


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FlashHeadError(f"{model_dir} is not a model directory (no config.json)") from None
    except json.JSONDecodeError as e:
        raise FlashHeadError(f"{path}: not valid JSON ({e})") from None


def read_head_weight(model_dir: Path) -> torch.Tensor:
    """The output head [V, d] from a model directory's safetensors (the embedding when tied)."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FlashHeadError(f"{model_dir}: no .safetensors weight files")
    names = ["lm_head.weight"]
    if config.get("tie_word_embeddings", False):
        names += ["model.embed_tokens.weight", "model.language_model.embed_tokens.weight",
                  "embed_tokens.weight"]
    for name in names:
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                if name in st.keys():
                    return st.get_tensor(name)
    raise FlashHeadError(f"{model_dir}: found no output head ({' or '.join(names)}) in its safetensors files")


def assets_dir(model_dir) -> Path:
    """The assets folder a FlashHead directory's config.json names."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if CACHE_KEY not in config:
        raise FlashHeadError(f"{model_dir} is not a FlashHead model directory (no {CACHE_KEY} in "
                             f"config.json); build one with `flashhead build`")
    return model_dir / config[CACHE_KEY]


def load_assets(model_dir) -> ClusterIndex:
    """The validated ClusterIndex of a FlashHead model directory (a published-layout one too: its
    config.json's `n_probes`, and `n_clusters` checked; index.py)."""
    config = read_config(model_dir)
    folder = assets_dir(model_dir)
    probes = config.get(PUBLISHED_PROBES)
    if probes is not None and (not isinstance(probes, int) or probes < 1):
        raise FlashHeadError(f"{model_dir}/config.json: {PUBLISHED_PROBES} must be a positive integer, got {probes!r}")
    index = ClusterIndex.load(folder, probes)
    k = config.get(PUBLISHED_CLUSTERS)
    if k is not None and k != index.num_clusters:
        raise FlashHeadError(f"{model_dir}/config.json: {PUBLISHED_CLUSTERS}={k} but {folder} holds "
                             f"{index.num_clusters} centroids")
    return index
