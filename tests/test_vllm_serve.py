"""`vllm serve` (OpenAI API, default multi-process mode) on loopback with the FlashHead directory."""
import json
import shutil

import pytest

pytest.importorskip("vllm")

from flashhead.tools.vllm_load import load, long_prompt_ids, serve as _serve, steps, stop as _stop, wait_ready as _wait_ready  # noqa: E402


def test_serve_64_concurrent(smollm2_hf_dir, smollm2_flashhead_dir, tmp_path):
    """64 requests at once through the OpenAI API (tools/vllm_load.py's mix: greedy with
    logprobs, sampled streams, stop strings, n=2, max_tokens=1, a prompt of max_model_len - 1
    tokens, one past it (400), a client that drops its stream): every answer as the API says, nothing
    left running, the server still answering; FlashHead on every step (the rule off)."""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc, port = _serve(smollm2_flashhead_dir, log, env={"FLASHHEAD_DENSE_RULE": "0"})
        try:
            assert _wait_ready(proc, port), log_path.read_text()[-3000:]
            summary = load(port, str(smollm2_flashhead_dir), 64, long_prompt_ids(smollm2_hf_dir))
        finally:
            _stop(proc)
    assert summary["completed"] == 64 and summary["after"]
    text = log_path.read_text()
    assert "FlashHead: model=" in text and "clusters(K)=3072" in text
    assert "FlashHead steps: flashhead=10 " in text   # the counter, from outside the process
    assert steps(text).endswith(" / 0")                # and never the dense head


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_other_models_assets_refuse_to_start(smollm2_flashhead_dir, smollm2_head, tmp_path):
    """The assets of another model of the same shape (the fingerprint of a different head): the
    server exits with the FlashHeadError that names it. (A truncated assets file, in one process:
    tests/test_vllm_llm.py.)"""
    from flashhead.core.index import fingerprint

    d = _copy(smollm2_flashhead_dir, tmp_path / "other_model")
    meta = d / "flash_head_assets" / "flashhead.json"
    m = json.loads(meta.read_text())
    m["fingerprint"] = fingerprint(smollm2_head.roll(1, dims=0))
    meta.write_text(json.dumps(m))
    expect = f"{d / 'flash_head_assets'}: head weight fingerprint mismatch"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc, port = _serve(d, log)
        try:
            ready = _wait_ready(proc, port)
        finally:
            _stop(proc)
    text = log_path.read_text()
    assert not ready and proc.returncode != 0, text[-3000:]
    assert "FlashHeadError" in text and expect in text, text[-3000:]
