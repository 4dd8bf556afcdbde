"""Build a FlashHead model directory: the base model's files + clustering assets + marked config.

    flashhead build gemma-3-270m -o models/gemma-3-270m-flashhead

The model runs once to calibrate (its own samples, or the user's text), the head weight is
clustered with balanced k-means in the calibrated metric, and the result is written as
`flash_head_assets/`. config.json gets
`architectures: ["FlashHead<Arch>"]` and `flash_head_cache_dir`, so a stack without the plugin
refuses the directory instead of silently running it dense.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from pathlib import Path

import torch

from .clustering import balanced_kmeans
from .config import FlashHeadConfig, FlashHeadError
from .index import ASSETS_DIR, ClusterIndex, fingerprint
from .sources import resolve

ARCH_PREFIX = "FlashHead"
CACHE_KEY = "flash_head_cache_dir"
# Calibration positions: 16,384 (12,288 to fit, 4,096 held out to choose probes). Measured on
# SmolLM2 (docs/FIDELITY.md): fitting on 6,144 instead left ~20% more dense top-1 misses.
CALIBRATION_POSITIONS = 16384
# Default probes: the smallest count reaching this greedy agreement on held-out calibration positions.
TARGET_AGREEMENT = 0.995


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


def calibration_hidden(src: Path, weight: torch.Tensor, calibration, positions: int, seed: int,
                       device: str | None, progress: bool) -> tuple[torch.Tensor, str]:
    """Hidden states [N, d] to calibrate on, text after text, and a description of their source.

    calibration: "fortunes" (the calibration split of corpus.py's real text), "self" (the model's
    own samples: no corpus needed, but measured less faithful on real prose, docs/FIDELITY.md),
    or a list of texts (teacher-forced)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import corpus, hidden

    if calibration == "fortunes":
        texts, what = corpus.load("calibration"), "Debian fortunes (calibration split)"
    elif calibration == "self":
        texts, what = None, "the model's own samples (T=1, from BOS)"
    elif isinstance(calibration, (list, tuple)) and calibration:
        texts, what = list(calibration), f"{len(calibration)} user texts"
    else:
        raise FlashHeadError(f"calibration must be 'fortunes', 'self' or a list of texts, got {calibration!r}")
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    if device:
        model.to(device)
    if model.get_output_embeddings().weight.shape != weight.shape:
        raise FlashHeadError(f"{src}: the loaded model's head does not match its safetensors head")
    if texts is None:
        h, _ = hidden.sampled(model, tok, positions, seed=seed, progress=progress)
    else:  # shuffled (seeded): the held-out quarter then samples every part of the text
        random.Random(seed).shuffle(texts)
        h, _ = hidden.teacher_forced(model, tok, texts, positions)
    if h.shape[0] < 64:
        raise FlashHeadError(f"calibration text gave {h.shape[0]} positions; give at least 64")
    return h, what


def fit_index(weight: torch.Tensor, h: torch.Tensor, config: FlashHeadConfig, device: str | None = None,
              progress: bool = False, held_out: torch.Tensor | None = None,
              target_agreement: float = TARGET_AGREEMENT, probes: int | None = None) -> ClusterIndex:
    """The index of head `weight` [V, d] fitted to calibration hidden states h [N, d]:
    1. clusters: balanced k-means on W sigma_dir^(1/2), usage-weighted stage-1 vectors, spread
       per cluster (calibrate.py);
    2. probes: `probes` if given, else the smallest count whose greedy agreement with the dense
       head reaches `target_agreement` on the hidden states `held_out` (else config.probes);
    3. the estimate's per-token offsets at those probes (estimate.py), from h.
    index.build records the seconds of each step and the held-out agreement."""
    from .calibrate import Calibration, query_transform, token_weights, weighted_spread
    from .estimate import FIT_POSITIONS, fit_offsets
    from .evaluate import dense_top1_rank, smallest_probes
    from .head import FlashHead

    t0 = time.perf_counter()
    cal = Calibration.from_hidden(weight, h)
    clustering = balanced_kmeans(weight, config.cluster_size, config.iterations, config.seed, device=device,
                                 progress=progress, metric="euclidean",
                                 transform=query_transform(cal.sigma_dir), token_weights=token_weights(cal.usage))
    spread = weighted_spread(weight, clustering.assignments, cal.sigma)
    index = ClusterIndex(config, clustering.assignments, clustering.centroids, spread, fingerprint(weight),
                         build=dict(clustering.stats))
    t1 = time.perf_counter()
    agreement = None
    if held_out is not None:
        ranks = dense_top1_rank(FlashHead(weight, index, probes=1), held_out, weight)
        probes = probes or smallest_probes(ranks, target_agreement)
        agreement = float((ranks < probes).float().mean())
    index.config = dataclasses.replace(config, probes=probes or config.probes)
    t2 = time.perf_counter()
    index.offsets = fit_offsets(FlashHead(weight, index), weight, h[:FIT_POSITIONS], progress=progress)
    t3 = time.perf_counter()
    index.build["held_out_agreement"] = agreement
    index.build["seconds"] = {"clustering": round(t1 - t0, 1), "probes": round(t2 - t1, 1),
                              "estimate": round(t3 - t2, 1)}
    return index


def build(source, out_dir, config: FlashHeadConfig | None = None, progress: bool = True,
          device: str | None = None, calibration="fortunes",
          positions: int = CALIBRATION_POSITIONS, target_agreement: float = TARGET_AGREEMENT,
          probes: int | None = None) -> Path:
    """Write a FlashHead model directory for `source` into `out_dir`; returns `out_dir`.

    1. calibrate: `positions` hidden states of the model on `calibration` (calibration_hidden;
       calibrate.py says what they shape);
    2. cluster: balanced k-means of the head rows in the calibrated metric (clustering.py);
    3. probes: `probes` if given, else the smallest count whose greedy agreement with the dense
       head reaches `target_agreement` on the last quarter of the calibration text, held out
       from 2 and 4 (whole texts: positions of one text are too alike to test each other);
    4. estimate: per-token offsets for the full-vocabulary logits (estimate.py).
    """
    config = config or FlashHeadConfig()
    src = resolve(source)
    out = Path(out_dir).expanduser()
    if out.resolve() == src.resolve():
        raise FlashHeadError("output directory must differ from the source model directory")
    if out.exists() and any(out.iterdir()) and not (out / ASSETS_DIR).is_dir():
        raise FlashHeadError(f"{out} exists and is not a FlashHead model directory; choose an empty "
                             f"or new directory")
    if not 0 < target_agreement <= 1:
        raise FlashHeadError(f"target agreement must lie in (0, 1], got {target_agreement}")
    if positions < 64:
        raise FlashHeadError(f"calibration needs at least 64 positions, got {positions}")
    model_config = read_config(src)
    arch = base_architecture(model_config)
    weight = read_head_weight(src).float()
    k = -(-weight.shape[0] // config.cluster_size)
    if probes is not None and not 1 <= probes <= k:
        raise FlashHeadError(f"probes={probes} exceeds the number of clusters ({k})" if probes > k
                             else f"probes must be a positive integer, got {probes}")
    t0 = time.perf_counter()

    h, source_text = calibration_hidden(src, weight, calibration, positions, config.seed, device, progress)
    t_cal = time.perf_counter()
    fit = h.shape[0] - h.shape[0] // 4
    index = fit_index(weight, h[:fit], config, device, progress, held_out=h[fit:],
                      target_agreement=target_agreement, probes=probes)
    seconds, agreement = index.build.pop("seconds"), index.build.pop("held_out_agreement")
    index.build = {**index.build, "source": str(source),
                   "calibration": {"text": source_text, "positions": fit,
                                   "held_out_positions": h.shape[0] - fit,
                                   "target_agreement": None if probes else target_agreement,
                                   "held_out_agreement": agreement},
                   "seconds": {"calibration": round(t_cal - t0, 1), **seconds,
                               "total": round(time.perf_counter() - t0, 1)},
                   "peak_rss_mb": _peak_rss_mb()}
    index.validate("built assets")

    out.mkdir(parents=True, exist_ok=True)
    _copy_model_files(src, out)
    index.save(out)
    model_config["architectures"] = [ARCH_PREFIX + arch]
    model_config[CACHE_KEY] = ASSETS_DIR
    (out / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    return out


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
