"""ClusterIndex: the clustering of one head, its on-disk format and its validation.

Files (inside a model directory's `flash_head_assets/`):
    clustering_cache.safetensors   centroids [d, K] (leading singleton dims accepted on read),
                                   cluster_assignments [V], and optionally token_offsets [V]
                                   (estimate.py; zeros when absent)
    flashhead.json                 {"format_version", "library_version", "config": FlashHeadConfig,
                                    "fingerprint": {...}, "build": {...}}

Derived at load (never stored): `block_ids [K, cs]`, the token ids of each cluster as one row
(padded with token 0 and masked by `block_mask` where V % cs != 0).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .config import FORMAT_VERSION, FlashHeadConfig, FlashHeadError
from .q8rows import gather_rows

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
    sample = gather_rows(weight, rows).float().cpu()
    return {"shape": [v, d], "rows": rows.tolist(), "projections": (sample @ direction).tolist(),
            "row_norms": sample.norm(dim=1).tolist()}


def check_fingerprint(expected: dict, weight: torch.Tensor, where: str) -> None:
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
    fingerprint: dict
    build: dict = dataclasses.field(default_factory=dict)
    offsets: torch.Tensor | None = None   # [V] float32 (estimate.py); None: zeros

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
        if list(self.fingerprint.get("shape", [None]))[0] != v:
            raise FlashHeadError(f"{where}: cluster_assignments has {v} tokens but the fingerprint "
                                 f"says the vocabulary is {self.fingerprint.get('shape', ['?'])[0]}")
        k = -(-v // cs)
        if c.dim() != 2 or c.shape[0] != k:
            raise FlashHeadError(f"{where}: expected {k} centroids for vocabulary {v} and cluster "
                                 f"size {cs}, got centroids of shape {list(c.shape)}")
        if int(a.min()) < 0 or int(a.max()) >= k:
            raise FlashHeadError(f"{where}: cluster_assignments holds ids outside [0, {k})")
        counts = torch.bincount(a.long(), minlength=k)
        want = torch.full((k,), cs, dtype=torch.int64)
        want[-1] = v - cs * (k - 1)
        if not torch.equal(torch.sort(counts).values, torch.sort(want).values):
            raise FlashHeadError(f"{where}: clusters are not of equal size {cs} "
                                 f"(sizes range {int(counts.min())}..{int(counts.max())})")
        if not torch.isfinite(c).all():
            raise FlashHeadError(f"{where}: centroids contain NaN or infinite values")
        if self.offsets.shape != (v,):
            raise FlashHeadError(f"{where}: token_offsets must have shape [{v}], got {list(self.offsets.shape)}")
        if not torch.isfinite(self.offsets).all():
            raise FlashHeadError(f"{where}: token_offsets contain NaN or infinite values")

    # ---- disk -------------------------------------------------------------------------------

    def save(self, model_dir: str | Path) -> Path:
        from safetensors.torch import save_file

        from . import __version__

        out = Path(model_dir) / ASSETS_DIR
        out.mkdir(parents=True, exist_ok=True)
        save_file({"centroids": self.centroids.T.contiguous().float(),
                   "cluster_assignments": self.assignments.long().contiguous(),
                   "token_offsets": self.offsets.float().contiguous()}, str(out / TENSORS_FILE))
        meta = {"format_version": FORMAT_VERSION, "library_version": __version__,
                "config": self.config.to_dict(), "fingerprint": self.fingerprint, "build": self.build}
        (out / JSON_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return out

    @classmethod
    def load(cls, assets_dir: str | Path) -> "ClusterIndex":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        assets_dir = Path(assets_dir)
        tensors_path, json_path = assets_dir / TENSORS_FILE, assets_dir / JSON_FILE
        for p in (tensors_path, json_path):
            if not p.is_file():
                raise FlashHeadError(f"missing FlashHead asset file: {p}")
        try:
            meta = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FlashHeadError(f"{json_path}: not valid JSON ({e})") from None
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError, ValueError) as e:
            raise FlashHeadError(f"{tensors_path}: unreadable safetensors file ({e})") from None
        for key in ("centroids", "cluster_assignments"):
            if key not in tensors:
                raise FlashHeadError(f"{tensors_path}: missing tensor '{key}'")
        for key in ("config", "fingerprint"):
            if key not in meta:
                raise FlashHeadError(f"{json_path}: missing key '{key}'")
        if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise FlashHeadError(f"{json_path}: format version {meta['format_version']} was written by a "
                                 f"newer flashhead ({meta.get('library_version')}); this one reads up to "
                                 f"{FORMAT_VERSION}: pip install -U flashhead")
        config = FlashHeadConfig.from_dict(meta["config"])
        centroids = tensors["centroids"]
        while centroids.dim() > 2 and centroids.shape[0] == 1:  # published layout may be [1, d, K]
            centroids = centroids[0]
        centroids = centroids.float().T.contiguous()            # [K, d]
        assignments = tensors["cluster_assignments"].reshape(-1).long()
        offsets = tensors.get("token_offsets")
        index = cls(config, assignments, centroids, meta["fingerprint"], meta.get("build", {}),
                    None if offsets is None else offsets.float())
        index.validate(str(assets_dir))
        return index
