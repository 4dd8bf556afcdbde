"""Build a FlashHead model directory: the base model's files + clustering assets + marked config.

    flashhead build gemma-3-270m -o models/gemma-3-270m-flashhead

The model runs once to calibrate (its own samples, or the user's text), the head weight is
clustered with balanced k-means in the calibrated metric, and the result is written as
`flash_head_assets/`. config.json gets
`architectures: ["FlashHead<Arch>"]`, `flash_head_cache_dir` and `model_type: "flashhead_<base>"`
(layout.mark_config), so a stack without the plugin refuses the directory instead of silently
running it dense.
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

from ..core.config import FlashHeadConfig, FlashHeadError
from .fit import TARGET_AGREEMENT, dense_top1_rank, fit_index
from ..core.index import ASSETS_DIR, JSON_FILE, TENSORS_FILE, fingerprint
from ..core.layout import (CACHE_KEY, assets_dir, base_architecture, load_assets, mark_config, read_config, read_head_weight)
from .sources import resolve
from .successors import cached_next_tokens, clusters_of
from ..core.estimate import fit_offsets
from ..core.head import FlashHead
from ..data import corpus, hidden
from ..data.chat import control_token_ids

# The default calibration: every domain of the suite and the extra languages (their calibration
# documents only) and the model's own samples, in equal shares. Measured (docs/FIDELITY.md,
# experiments/suite_lab.py): a build calibrated on English prose alone kept 81.6% of SmolLM2's
# greedy tokens on Russian and 95.0% on licences; one calibrated on the suite 100% and 97.9%, and
# one that left a domain out still beat the prose-only build there (russian 99.0%, legal 95.6%,
# with the model's own samples started from every kind of token in its vocabulary: kinds.py).
DEFAULT_CALIBRATION = ["suite"]
# Calibration positions: 16,384 (12,288 to fit, 4,096 held out to choose probes). Measured on
# SmolLM2 (docs/FIDELITY.md): fitting on 6,144 instead left ~20% more dense top-1 misses.
CALIBRATION_POSITIONS = 16384
# An upgrade (published clusters kept) fits only the estimate offsets (estimate.FIT_POSITIONS read)
# and measures the held-out agreement on the rest.
UPGRADE_POSITIONS = 6144


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


def calibration_sources(calibration) -> list:
    """The sources a calibration names: "self" (the model's own samples), corpus domains
    (corpus.DOMAINS; "fortunes" is "prose"), "suite" (every domain and self), or lists of texts."""
    items = [calibration] if isinstance(calibration, str) else list(calibration or [])
    out = []
    for item in items:
        if item == "suite":
            out += [d for d in corpus.DOMAINS if d not in out] + (["self"] if "self" not in out else [])
        elif item == "fortunes":
            out.append("prose")
        elif item == "self" or item in corpus.DOMAINS or item in corpus.OPTIONAL:
            out.append(item)
        elif isinstance(item, (list, tuple)) and item and all(isinstance(t, str) for t in item):
            out.append(list(item))
        else:
            raise FlashHeadError(f"unknown calibration source {item!r}: give 'self', 'suite', a domain "
                                 f"({', '.join(corpus.DOMAINS + corpus.OPTIONAL)}) or text files")
    if not out:
        raise FlashHeadError("calibration names no source")
    return out


def describe(sources: list) -> str:
    return " + ".join(f"{len(s)} user texts" if isinstance(s, list) else s for s in sources)


def calibration_hidden(src: Path, weight: torch.Tensor, calibration, positions: int, seed: int,
                       device: str | None, progress: bool) -> tuple[list[torch.Tensor], object]:
    """Hidden states to calibrate on: [N_i, d] per source (calibration_sources), equal shares of
    `positions`, each text after text: "self" samples the model (hidden.sampled), a domain is
    teacher-forced on its calibration documents (corpus.py; never its eval documents), a list
    of texts (the user's files) likewise. Returns them and the model's tokenizer."""
    from ..tools.evaluate import suite_texts
    from ..integrations import hf

    sources = calibration_sources(calibration)
    model, tok = hf.load(src, dense=True, device=device)   # a FlashHead source too: its dense head
    if model.get_output_embeddings().weight.shape != weight.shape:
        raise FlashHeadError(f"{src}: the loaded model's head does not match its safetensors head")
    if "chat" in sources and not getattr(tok, "chat_template", None):
        print("calibration: no chat template (a base model): the chat domain is left out", flush=True)
        sources = [s for s in sources if s != "chat"]
    share = positions // len(sources)
    out = []
    for source in sources:
        if progress:
            print(f"calibration: {describe([source])}, {share} positions", flush=True)
        if source == "self":
            h, _ = hidden.sampled(model, tok, share, seed=seed, progress=progress)
        else:  # shuffled (seeded): the held-out quarter then samples every part of the text
            texts = list(source) if isinstance(source, list) else suite_texts(model, tok, source, "calibration")
            random.Random(seed).shuffle(texts)
            h, _ = hidden.teacher_forced(model, tok, texts, share)
        out.append(h)
    if sum(h.shape[0] for h in out) < 64:
        raise FlashHeadError(f"calibration text gave {sum(h.shape[0] for h in out)} positions; give at least 64")
    return out, tok


def end_tokens(src: Path, tokenizer) -> list[int]:
    """The tokens that end or frame a turn for this model: its EOS ids (config, generation config,
    tokenizer) and its chat template's control tokens (chat.control_token_ids)."""
    ids = set(control_token_ids(tokenizer))
    for name in ("config.json", "generation_config.json"):
        path = Path(src) / name
        eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
        ids |= set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())
    return sorted(ids)


def split_held_out(hs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per source, the last quarter held out (whole texts: positions of one text are too alike
    to test each other) -> (fit [N, d], held_out [M, d])."""
    fit = [h[: h.shape[0] - h.shape[0] // 4] for h in hs]
    held = [h[h.shape[0] - h.shape[0] // 4:] for h in hs]
    return torch.cat(fit), torch.cat(held)


def build(source, out_dir, config: FlashHeadConfig | None = None, progress: bool = True,
          device: str | None = None, calibration=None,
          positions: int = CALIBRATION_POSITIONS, target_agreement: float = TARGET_AGREEMENT,
          probes: int | None = None, next_clusters: bool = False) -> Path:
    """Write a FlashHead model directory for `source` into `out_dir`; returns `out_dir`.

    1. calibrate: `positions` hidden states of the model on `calibration` (calibration_hidden;
       calibrate.py says what they shape);
    2. cluster: balanced k-means of the head rows in the calibrated metric (clustering.py);
    3. probes: `probes` if given, else the smallest count whose greedy agreement with the dense
       head reaches `target_agreement` on the last quarter of the calibration text, held out
       from 2 and 4 (whole texts: positions of one text are too alike to test each other);
    4. estimate: per-token offsets for the full-vocabulary logits (estimate.py);
    5. with `next_clusters`: each token's next clusters for the context (successors.py).
    """
    config = config or FlashHeadConfig()
    sources = calibration_sources(DEFAULT_CALIBRATION if calibration is None else calibration)
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

    hs, tok = calibration_hidden(src, weight, sources, positions, config.seed, device, progress)
    t_cal = time.perf_counter()
    if not config.exact_tokens:   # a reply ends where the dense head ends it (config.exact_tokens)
        config = dataclasses.replace(config, exact_tokens=end_tokens(src, tok))
    fit, held = split_held_out(hs)
    index = fit_index(weight, fit, config, device, progress, held_out=held,
                      target_agreement=target_agreement, probes=probes)
    seconds, agreement = index.build.pop("seconds"), index.build.pop("held_out_agreement")
    index.build = {**index.build, "source": str(source),
                   "calibration": {"text": describe(sources),
                                   "sources": [s if isinstance(s, str) else "user texts" for s in sources],
                                   "positions": fit.shape[0],
                                   "held_out_positions": held.shape[0],
                                   "target_agreement": None if probes else target_agreement,
                                   "held_out_agreement": agreement},
                   "seconds": {"calibration": round(t_cal - t0, 1), **seconds,
                               "total": round(time.perf_counter() - t0, 1)},
                   "peak_rss_mb": _peak_rss_mb()}
    index.validate("built assets")

    out.mkdir(parents=True, exist_ok=True)
    _copy_model_files(src, out)
    index.save(out)
    model_config = mark_config(model_config, arch)
    (out / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    if next_clusters:
        add_next_clusters(out, progress=progress, device=device)
    return out


def add_next_clusters(model_dir, progress: bool = True, device: str | None = None) -> Path:
    """Add each token's next clusters (successors.py) to a FlashHead directory's assets, in place
    (the tensors file replaced atomically; the clusters, probes and offsets kept). The seconds it
    took go into the build record."""
    from ..integrations import hf

    model_dir = Path(model_dir)
    if not (assets_dir(model_dir) / JSON_FILE).is_file():
        raise FlashHeadError(f"{model_dir}: a published-layout directory; run `flashhead upgrade` on it first")
    index = load_assets(model_dir)
    t0 = time.perf_counter()
    model, tok = hf.load(model_dir, dense=True, device=device)
    index.successors = clusters_of(cached_next_tokens(model_dir, model, tok, progress), index.assignments)
    index.build = {**index.build, "next_clusters": {"per_token": index.successors.shape[1],
                                                   "seconds": round(time.perf_counter() - t0, 1)}}
    index.validate("next clusters")
    index.save(model_dir, assets=assets_dir(model_dir).name)
    return model_dir


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def upgrade(model_dir, calibration=None, positions: int = UPGRADE_POSITIONS, progress: bool = True,
            device: str | None = None) -> Path:
    """Make a published-layout directory (index.py) a full FlashHead directory, in place: add
    flashhead.json (config at the published probes, the head's fingerprint, a build record with the
    held-out agreement), the always-exact end tokens and the estimate's per-token offsets fitted
    on calibration text. The published clusters and both tensors stay as they are."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    folder = assets_dir(model_dir)
    if (folder / JSON_FILE).is_file():
        raise FlashHeadError(f"{folder} already has {JSON_FILE}: nothing to upgrade")
    index = load_assets(model_dir)
    weight = read_head_weight(model_dir).float()
    if weight.shape[0] != index.vocab:
        raise FlashHeadError(f"{folder}: clusters cover {index.vocab} tokens, the head has {weight.shape[0]}")
    sources = calibration_sources(DEFAULT_CALIBRATION if calibration is None else calibration)
    t0 = time.perf_counter()
    hs, tok = calibration_hidden(model_dir, weight, sources, positions, index.config.seed, device, progress)
    fit, held = split_held_out(hs)
    index.config = dataclasses.replace(index.config, exact_tokens=end_tokens(model_dir, tok))
    index.fingerprint = fingerprint(weight)
    head = FlashHead(weight, index)          # one head: a cosine index's member means computed once
    agreement = float((dense_top1_rank(head, held, weight) < index.config.probes).float().mean())
    index.offsets = fit_offsets(head, weight, fit, progress=progress)
    index.build = {"layout": "published, upgraded by flashhead", "source": str(model_dir),
                   "calibration": {"text": describe(sources), "positions": fit.shape[0],
                                   "held_out_positions": held.shape[0], "held_out_agreement": agreement},
                   "seconds": {"total": round(time.perf_counter() - t0, 1)}}
    published = load_file(str(folder / TENSORS_FILE))
    index.save(model_dir, {k: published[k] for k in ("centroids", "cluster_assignments")},
               assets=folder.name)
    # config.json marked as our builds mark it (plain transformers then refuses the directory
    # instead of loading it dense), the published cache folder name kept
    config = read_config(model_dir)
    marked = {**mark_config(config, base_architecture(config)), CACHE_KEY: folder.name}
    tmp = model_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(marked, indent=2) + "\n")
    os.replace(tmp, model_dir / "config.json")
    return model_dir
