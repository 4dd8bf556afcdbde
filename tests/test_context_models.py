"""Context-aware probes on the real SmolLM2-135M, in transformers' own generate() and in the one
decode loop (tools/engine.py) on llama.cpp: each sequence's own set, causal in a prompt, reset
when a slot passes to the next sequence; with a build's next clusters (build/successors.py), those
of the token each position read join its step."""
from __future__ import annotations

import pytest
import torch

import flashhead
from flashhead.core.context import running, with_next
from flashhead.integrations import hf

from test_transformers import hf_generate

PROMPTS = ["Water boils at a temperature of", "The capital of France is Paris. The capital of Italy is",
           "def fib(n):\n    return", "Der schnelle braune Fuchs springt über den"]


@pytest.fixture(scope="module", params=["plain", "next"])
def loaded(request, smollm2_flashhead_dir, smollm2_next_dir):   # named here: conftest marks by fixture name
    model, tok = hf.load(smollm2_flashhead_dir if request.param == "plain" else smollm2_next_dir)
    model.lm_head.flashhead.context_probes = 48        # a budget that changes the probes
    assert (model.lm_head.flashhead.successors is None) == (request.param == "plain")
    return model, tok


def test_prompt_logits_see_only_the_text_so_far(loaded):
    """A full forward's logits at each position are FlashHead's with that position's running
    context (no later token of the prompt enters it) and the next clusters of its own token."""
    model, tok = loaded
    head = model.lm_head.flashhead
    ids = tok(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        got = model(input_ids=ids).logits[0]
        h = model.base_model(input_ids=ids).last_hidden_state[0]
    first = torch.zeros(ids.shape[1], dtype=torch.bool)
    first[0] = True
    held = running(head.assignments, head.num_clusters, ids[0], first)
    with torch.inference_mode(), head.flashhead_only():
        want = head(h, with_next(held, ids[0], head.successors))
        plain = head(h)
        alone = head(h, held)
    torch.testing.assert_close(got, want)
    assert not torch.equal(want, plain)                # the context did change the probes
    assert torch.equal(want, alone) == (head.successors is None)   # and so did the next clusters


def test_next_clusters_are_the_dense_heads_after_the_token_alone(smollm2_next_dir):
    """The stored table against a direct fp32 computation for sampled tokens: the model on [BOS, x]
    read whole, the dense head, each cluster's best member, the best 32. The build reads [BOS] once
    and repeats its cache, in fp32, or in bf16 where the CPU has AVX-512 BF16: both forms are
    checked on every host (bf16 by torch's own kernels where the CPU lacks it). Measured on SmolLM2
    (these 64 tokens, 2-core AVX2 host): fp32 shares 32.0 of 32 clusters on average, the first at
    100%; bf16 29.5 (the fewest 15: near-ties late in the order) and 90.6%. Floors 28 and 85%."""
    from flashhead.build.successors import clusters_of, next_tokens
    from flashhead.core.layout import load_assets

    model, tok = hf.load(smollm2_next_dir, dense=True)
    index = load_assets(smollm2_next_dir)
    assert index.successors.shape == (49152, 32)
    x = torch.randint(0, 49152, (64,), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ids = torch.stack([torch.full_like(x, tok.bos_token_id), x], 1)
        h = model.base_model(input_ids=ids).last_hidden_state[:, -1]
        logits = h @ model.get_output_embeddings().weight.T
    a = index.assignments
    best = torch.full((64, index.num_clusters), float("-inf")).scatter_reduce(1, a.expand(64, -1), logits, "amax")
    want = best.topk(32, 1).indices
    for name, table in (("stored", index.successors[x]),
                        ("bf16", clusters_of(next_tokens(model, tok, ids=x, dtype=torch.bfloat16, progress=False), a))):
        shared = sum(len(set(want[i].tolist()) & set(table[i].tolist())) for i in range(64)) / 64
        first = float((want[:, 0] == table[:, 0]).float().mean())
        assert shared >= 28 and first >= 0.85, (name, shared, first)


def test_a_step_uses_the_first_next_clusters_by_the_budget(smollm2_next_dir):
    """The head hands a step the first E // NEXT_PER of the stored next clusters (none at E = 0),
    or the count set by hand; the engine and the vLLM contexts take them from there."""
    from flashhead.core.context import NEXT_PER

    head = hf.load(smollm2_next_dir)[0].lm_head.flashhead
    table = head.next_table
    for e in (0, NEXT_PER - 1, NEXT_PER, 36, 48, 287):
        head.context_probes = e
        n = min(e // NEXT_PER, table.shape[1])
        assert (head.successors is None) if n == 0 else torch.equal(head.successors, table[:, :n])
    head.next_clusters = 3
    assert torch.equal(head.successors, table[:, :3])
    head.successors = None
    assert head.successors is None


def test_transformers_generate_equals_the_engine(loaded):
    """transformers' generate() (one prompt at a time: no padding in the context) and the engine on
    the transformers backend keep the same per-sequence context: the same greedy tokens."""
    from flashhead.backends.transformers import TransformersBackend
    from flashhead.tools.generate import generate

    model, tok = loaded
    head = model.lm_head.flashhead
    backend = TransformersBackend(model, tok, max_sequences=len(PROMPTS))
    engine = generate(backend, head, PROMPTS, max_new_tokens=24)["token_ids"]
    with head.flashhead_only():
        ours = [hf_generate(model, tok, [p], max_new_tokens=24)[0] for p in PROMPTS]
    assert ours == engine


def test_an_engine_follows_the_heads_budget_set_after_it_was_made(loaded):
    """The engine reads the context budget (and with it the next clusters) from the head at every
    step: an engine made with the context off decodes, once the budget is raised, what an engine
    made at that budget decodes (and not what it decoded with the context off)."""
    from flashhead.backends.transformers import TransformersBackend
    from flashhead.tools.engine import Engine, Request

    model, tok = loaded
    head = model.lm_head.flashhead
    backend = TransformersBackend(model, tok, max_sequences=1)

    def run(engine):
        s = engine.add(Request(backend.tokenize(PROMPTS[1]), max_new_tokens=12, ignore_end=True))
        while engine.busy:
            engine.step()
        return s.new

    saved = head.context_probes
    try:
        with head.flashhead_only(probes=8):                   # few probes: the context decides them
            head.context_probes = 0
            made_off = Engine(backend, head)
            off = run(made_off)
            head.context_probes = 8                           # every probe to the context: other tokens
            assert run(made_off) == run(Engine(backend, head)) != off
    finally:
        head.context_probes = saved


def test_llamacpp_slots_pass_to_new_sequences_with_fresh_contexts(smollm2_flashhead_dir):
    """Six prompts through two slots (the engine admits one as another ends, as the server does):
    every sequence's tokens are those it decodes alone, so no context leaks from the sequence that
    held its slot before, nor from the one it shares a step with."""
    pytest.importorskip("llama_cpp")
    from flashhead.tools.engine import Engine, Request

    m = flashhead.load(smollm2_flashhead_dir, "llamacpp", gguf="smollm2-135m", max_sequences=2, n_ctx=512)
    try:
        m.head.context_probes = 48
        prompts = PROMPTS + PROMPTS[:2][::-1]
        lengths = [16, 9, 12, 16, 7, 16]                    # they end at different steps
        engine, pending, seqs = Engine(m.backend, m.head), list(range(len(prompts))), {}
        while pending or engine.busy:
            while pending and engine.free_slots:
                i = pending.pop(0)
                seqs[i] = engine.add(Request(m.backend.tokenize(prompts[i]), max_new_tokens=lengths[i],
                                             ignore_end=True))
            engine.step()
        for i, p in enumerate(prompts):
            alone = m.generate([p], max_new_tokens=lengths[i], ignore_end=True)["token_ids"][0]
            assert seqs[i].new == alone, i
    finally:
        m.close()
