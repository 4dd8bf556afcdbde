"""Build a FlashHead model directory: the base model's files + clustering assets + marked config.

    flashhead build gemma-3-270m -o models/gemma-3-270m-flashhead

The head weight is read straight from the safetensors files (no model load), clustered with
balanced k-means, and written as `flash_head_assets/`. config.json gets
`architectures: ["FlashHead<Arch>"]` and `flash_head_cache_dir`, so a stack without the plugin
refuses the directory instead of silently running it dense.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .clustering import balanced_kmeans
from .config import FlashHeadConfig, FlashHeadError
from .index import ASSETS_DIR, ClusterIndex, fingerprint
from .sources import resolve

ARCH_PREFIX = "FlashHead"
CACHE_KEY = "flash_head_cache_dir"


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


def _copy_model_files(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        if item.name in (ASSETS_DIR, "config.json") or item.is_dir():
            continue
        target = dst / item.name
        if target.exists():
            target.unlink()
        try:
            os.link(item, target)  # same filesystem: no copy of the weights
        except OSError:
            shutil.copy2(item, target)


def build(source, out_dir, config: FlashHeadConfig | None = None, progress: bool = True,
          device: str | None = None) -> Path:
    """Write a FlashHead model directory for `source` into `out_dir`; returns `out_dir`."""
    config = config or FlashHeadConfig()
    src = resolve(source)
    out = Path(out_dir).expanduser()
    if out.resolve() == src.resolve():
        raise FlashHeadError("output directory must differ from the source model directory")
    if out.exists() and any(out.iterdir()) and not (out / ASSETS_DIR).is_dir():
        raise FlashHeadError(f"{out} exists and is not a FlashHead model directory; choose an empty "
                             f"or new directory")
    model_config = read_config(src)
    arch = base_architecture(model_config)
    weight = read_head_weight(src)
    if config.probes > -(-weight.shape[0] // config.cluster_size):
        raise FlashHeadError(f"probes={config.probes} exceeds the number of clusters "
                             f"({-(-weight.shape[0] // config.cluster_size)})")
    clustering = balanced_kmeans(weight, config.cluster_size, config.iterations, config.seed,
                                 device=device, progress=progress)
    index = ClusterIndex(config, clustering.assignments, clustering.centroids, clustering.spread,
                         fingerprint(weight), build={**clustering.stats, "source": str(source)})
    index.validate("built assets")

    out.mkdir(parents=True, exist_ok=True)
    _copy_model_files(src, out)
    index.save(out)
    model_config["architectures"] = [ARCH_PREFIX + arch]
    model_config[CACHE_KEY] = ASSETS_DIR
    (out / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    return out
