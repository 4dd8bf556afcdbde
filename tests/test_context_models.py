"""Context-aware probes on the real SmolLM2-135M, in transformers' own generate() and in the one
decode loop (tools/engine.py) on llama.cpp: each sequence's own set, causal in a prompt, reset
when a slot passes to the next sequence."""
from __future__ import annotations

import pytest
import torch

import flashhead
from flashhead.core.context import running
from flashhead.integrations import hf

from test_transformers import hf_generate

PROMPTS = ["Water boils at a temperature of", "The capital of France is Paris. The capital of Italy is",
           "def fib(n):\n    return", "Der schnelle braune Fuchs springt über den"]


@pytest.fixture(scope="module")
def loaded(smollm2_flashhead_dir):
    model, tok = hf.load(smollm2_flashhead_dir)
    model.lm_head.flashhead.context_probes = 48        # a budget that changes the probes
    return model, tok


def test_prompt_logits_see_only_the_text_so_far(loaded):
    """A full forward's logits at each position are FlashHead's with that position's running
    context (no later token of the prompt enters it)."""
    model, tok = loaded
    head = model.lm_head.flashhead
    ids = tok(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        got = model(input_ids=ids).logits[0]
        h = model.base_model(input_ids=ids).last_hidden_state[0]
    first = torch.zeros(ids.shape[1], dtype=torch.bool)
    first[0] = True
    ctx = running(head.assignments, head.num_clusters, ids[0], first)
    with torch.inference_mode(), head.flashhead_only():
        want = head(h, ctx)
        plain = head(h)
    torch.testing.assert_close(got, want)
    assert not torch.equal(want, plain)                # the context did change the probes


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
