"""ClusterIndex: the clustering of one head, its on-disk format and its validation.

Files (inside a model directory's `flash_head_assets/`):
    clustering_cache.safetensors   centroids [d, K] (leading singleton dims accepted on read),
                                   cluster_assignments [V], and optionally token_offsets [V]
                                   (estimate.py; zeros when absent) and next_clusters [V, m]
                                   int32 (build/successors.py; the context's clusters per token)
    flashhead.json                 {"format_version", "library_version", "config": FlashHeadConfig,
                                    "fingerprint": {...}, "build": {...}}

Derived at load (never stored): `block_ids [K, cs]`, the token ids of each cluster as one row
(padded with token 0 and masked by `block_mask` where a cluster has fewer than cs members).

Published layout: directories of published FlashHead checkpoints have no flashhead.json; their
clustering_cache.safetensors holds only `centroids` ([d, K] or [1, 1, d, K]) and
`cluster_assignments` ([V] int64), their stage-1 score is the cosine to the normalised centroids,
clusters may be unequal, and config.json may give `n_probes` (default K/16) and `n_clusters`.
`load` reads them as config.stage1 = "cosine", cluster_size = the largest cluster, no
fingerprint (logged once where the head is built: nothing to check it against);
`flashhead upgrade DIR` (build.upgrade) adds flashhead.json, the fingerprint and the estimate
offsets in place and keeps both tensors as they are. Our own files keep the two tensors under
the published names and shapes, so a reader of that layout finds the clusters in ours too.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch

from .config import FORMAT_VERSION, FlashHeadConfig, FlashHeadError
from .rows import as_rows

ASSETS_DIR = "flash_head_assets"
TENSORS_FILE = "clustering_cache.safetensors"
JSON_FILE = "flashhead.json"

# Fingerprint: projections of a fixed sample of head rows on a fixed random direction. It is
# compared with a tolerance so the same head loaded as fp32, bf16 or fp16 still matches, while
# another model's head (or a fine-tune of this one) does not.
_FP_ROWS = 256
_FP_RTOL = 0.02  # bf16 rounding moves a projection by ~0.004 of its scale; another head by ~1


def fingerprint(weight: torch.Tensor) -> dict:
    v, d = weight.shape
    gen = torch.Generator().manual_seed(1234)
    rows = torch.randperm(v, generator=gen)[: min(_FP_ROWS, v)].sort().values
    direction = torch.randn(d, generator=gen)
    sample = as_rows(weight).gather(rows).float().cpu()
    return {"shape": [v, d], "rows": rows.tolist(), "projections": (sample @ direction).tolist(),
            "row_norms": sample.norm(dim=1).tolist()}


_UNCHECKED: set = set()


def check_fingerprint(expected: dict | None, weight: torch.Tensor, where: str) -> None:
    if expected is None:                                 # published layout: nothing to compare
        if where not in _UNCHECKED:
            _UNCHECKED.add(where)
            logging.getLogger("flashhead").warning(
                "%s: no flashhead.json, so no fingerprint: cannot check that these assets were built "
                "from this head (`flashhead upgrade DIR` adds one)", where)
        return
    v, d = weight.shape
    if list(expected["shape"]) != [v, d]:
        raise FlashHeadError(f"{where}: assets were built for a head of shape {expected['shape']}, "
                             f"this model's head is [{v}, {d}] (assets of another model?)")
    got = fingerprint(weight)
    want_p = torch.tensor(expected["projections"])
    got_p = torch.tensor(got["projections"])
    scale = torch.tensor(expected["row_norms"]).mean().clamp_min(1e-12)  # std of a projection
    err = float((want_p - got_p).abs().max() / scale)
    if got["rows"] != expected["rows"] or not err <= _FP_RTOL:    # NaN (a broken head) fails too
        raise FlashHeadError(f"{where}: head weight fingerprint mismatch (relative error {err:.3g} > "
                             f"{_FP_RTOL}): these assets were built from a different head weight")


@dataclasses.dataclass
class ClusterIndex:
    config: FlashHeadConfig
    assignments: torch.Tensor   # [V] int64
    centroids: torch.Tensor     # [K, d] float32 (raw cluster means)
    fingerprint: dict | None     # None: published layout without flashhead.json (nothing to check)
    build: dict = dataclasses.field(default_factory=dict)
    offsets: torch.Tensor | None = None   # [V] float32 (estimate.py); None: zeros
    successors: torch.Tensor | None = None   # [V, m] int64 next clusters (build/successors.py); None: none

    def __post_init__(self):
        if self.offsets is None:
            self.offsets = torch.zeros(self.assignments.numel())

    @property
    def vocab(self) -> int:
        return self.assignments.numel()

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """block_ids [K, cs] (token ids grouped by cluster, stable order), block_mask [K, cs] bool."""
        k, cs = self.num_clusters, self.config.cluster_size
        order = torch.argsort(self.assignments, stable=True)
        counts = torch.bincount(self.assignments, minlength=k)
        start = torch.cumsum(counts, 0) - counts
        cl = self.assignments[order]
        ids = torch.zeros(k, cs, dtype=torch.int64)
        mask = torch.zeros(k, cs, dtype=torch.bool)
        slot = torch.arange(cl.numel()) - start[cl]
        ids[cl, slot] = order
        mask[cl, slot] = True
        return ids, mask

    def validate(self, where: str = "FlashHead assets") -> None:
        cs = self.config.cluster_size
        a, c = self.assignments, self.centroids
        if a.dim() != 1 or a.dtype not in (torch.int32, torch.int64):
            raise FlashHeadError(f"{where}: cluster_assignments must be a 1-D integer tensor, "
                                 f"got shape {list(a.shape)} {a.dtype}")
        v = a.numel()
        if self.fingerprint is not None and list(self.fingerprint.get("shape", [None]))[0] != v:
            raise FlashHeadError(f"{where}: cluster_assignments has {v} tokens but the fingerprint "
                                 f"says the vocabulary is {self.fingerprint.get('shape', ['?'])[0]}")
        balanced = self.config.stage1 == "mean"          # our builds; published clusters may differ
        k = -(-v // cs) if balanced else c.shape[0]
        if c.dim() != 2 or c.shape[0] != k:
            raise FlashHeadError(f"{where}: expected {k} centroids for vocabulary {v} and cluster "
                                 f"size {cs}, got centroids of shape {list(c.shape)}")
        if int(a.min()) < 0 or int(a.max()) >= k:
            raise FlashHeadError(f"{where}: cluster_assignments holds ids outside [0, {k})")
        counts = torch.bincount(a.long(), minlength=k)
        if balanced:
            want = torch.full((k,), cs, dtype=torch.int64)
            want[-1] = v - cs * (k - 1)
            if not torch.equal(torch.sort(counts).values, torch.sort(want).values):
                raise FlashHeadError(f"{where}: clusters are not of equal size {cs} "
                                     f"(sizes range {int(counts.min())}..{int(counts.max())})")
        elif int(counts.max()) > cs:
            raise FlashHeadError(f"{where}: a cluster has {int(counts.max())} members, more than "
                                 f"cluster_size {cs}")
        if not torch.isfinite(c).all():
            raise FlashHeadError(f"{where}: centroids contain NaN or infinite values")
        if self.offsets.shape != (v,):
            raise FlashHeadError(f"{where}: token_offsets must have shape [{v}], got {list(self.offsets.shape)}")
        if not torch.isfinite(self.offsets).all():
            raise FlashHeadError(f"{where}: token_offsets contain NaN or infinite values")
        n = self.successors
        if n is not None and (n.dim() != 2 or n.shape[0] != v or not n.shape[1]
                              or int(n.min()) < 0 or int(n.max()) >= k):
            raise FlashHeadError(f"{where}: next_clusters must be [{v}, m] cluster ids in [0, {k}), got "
                                 f"shape {list(n.shape)}")

    # ---- disk -------------------------------------------------------------------------------

    def save(self, model_dir: str | Path, tensors: dict | None = None, assets: str = ASSETS_DIR) -> Path:
        """Write the assets into `model_dir`/`assets`, each file replaced atomically (the
        tensors first: flashhead.json marks a complete folder). `tensors` overrides the stored
        centroids/assignments (an upgrade keeps a published folder's own tensors)."""
        from safetensors.torch import save_file

        from .. import __version__

        out = Path(model_dir) / assets
        out.mkdir(parents=True, exist_ok=True)
        tensors = tensors or {"centroids": self.centroids.T.contiguous().float(),
                              "cluster_assignments": self.assignments.long().contiguous()}
        tmp = out / f".{TENSORS_FILE}.tmp"
        extra = {} if self.successors is None else {"next_clusters": self.successors.to(torch.int32).contiguous()}
        save_file({**tensors, "token_offsets": self.offsets.float().contiguous(), **extra}, str(tmp))
        os.replace(tmp, out / TENSORS_FILE)
        meta = {"format_version": FORMAT_VERSION, "library_version": __version__,
                "config": self.config.to_dict(), "fingerprint": self.fingerprint, "build": self.build}
        tmp = out / f".{JSON_FILE}.tmp"
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, out / JSON_FILE)
        return out

    @classmethod
    def load(cls, assets_dir: str | Path, probes: int | None = None) -> "ClusterIndex":
        """The validated index in `assets_dir`; a published-layout folder (no flashhead.json) too,
        at `probes` (config.json's n_probes; default K/16)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        assets_dir = Path(assets_dir)
        tensors_path, json_path = assets_dir / TENSORS_FILE, assets_dir / JSON_FILE
        if not tensors_path.is_file():
            raise FlashHeadError(f"missing FlashHead asset file: {tensors_path}")
        if json_path.is_file():
            try:
                meta = json.loads(json_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise FlashHeadError(f"{json_path}: not valid JSON ({e})") from None
        else:
            meta = None
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError, ValueError) as e:
            raise FlashHeadError(f"{tensors_path}: unreadable safetensors file ({e})") from None
        for key in ("centroids", "cluster_assignments"):
            if key not in tensors:
                raise FlashHeadError(f"{tensors_path}: missing tensor '{key}'")
        if meta is None:
            return cls._published(tensors, probes, str(assets_dir))
        for key in ("config", "fingerprint"):
            if key not in meta:
                raise FlashHeadError(f"{json_path}: missing key '{key}'")
        if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise FlashHeadError(f"{json_path}: format version {meta['format_version']} was written by a "
                                 f"newer flashhead ({meta.get('library_version')}); this one reads up to "
                                 f"{FORMAT_VERSION}: pip install -U flashhead")
        config = FlashHeadConfig.from_dict(meta["config"])
        offsets, nxt = tensors.get("token_offsets"), tensors.get("next_clusters")
        index = cls(config, tensors["cluster_assignments"].reshape(-1).long(), _centroids(tensors),
                    meta["fingerprint"], meta.get("build", {}), None if offsets is None else offsets.float(),
                    None if nxt is None else nxt.long())
        index.validate(str(assets_dir))
        return index

    @classmethod
    def _published(cls, tensors: dict, probes: int | None, where: str) -> "ClusterIndex":
        centroids = _centroids(tensors)
        assignments = tensors["cluster_assignments"].reshape(-1).long()
        k = centroids.shape[0]
        if assignments.numel() and (int(assignments.min()) < 0 or int(assignments.max()) >= k):
            raise FlashHeadError(f"{where}: cluster_assignments holds ids outside [0, {k})")
        size = int(torch.bincount(assignments, minlength=k).max())
        config = FlashHeadConfig(cluster_size=size, probes=probes or max(1, k // 16), quantization="none",
                                 stage1="cosine")
        offsets = tensors.get("token_offsets")                 # written by an interrupted upgrade
        index = cls(config, assignments, centroids, None, {"layout": "published"},
                    None if offsets is None else offsets.float())
        index.validate(where)
        return index


def _centroids(tensors: dict) -> torch.Tensor:
    """The stored centroids [d, K] (leading singleton dims accepted) -> [K, d] float32."""
    c = tensors["centroids"]
    while c.dim() > 2 and c.shape[0] == 1:                     # published layout may be [1, 1, d, K]
        c = c[0]
    return c.float().T.contiguous()
