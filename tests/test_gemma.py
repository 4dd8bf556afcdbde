"""Gemma-3-270M (the embedded default, vocab 262,144): opt-in, minutes on 2 cores.

Run with `pytest -m slow tests/test_gemma.py`.
"""
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from flashhead.build import build
    from flashhead.integrations import hf

    out = build("gemma-3-270m", tmp_path_factory.mktemp("gemma") / "gemma-flashhead", progress=False)
    return hf.load(out)


def test_all_probes_greedy_equals_dense(gemma):
    from test_transformers import hf_generate

    model, tok = gemma
    prompts = ["The capital of France is", "Water boils at", "def fibonacci(n):"]
    head = model.lm_head
    head.use_flashhead = False
    dense = hf_generate(model, tok, prompts, max_new_tokens=24)
    head.use_flashhead = True
    with head.flashhead.flashhead_only(head.flashhead.num_clusters):
        assert hf_generate(model, tok, prompts, max_new_tokens=24) == dense
    assert tok("a")["input_ids"][0] == tok.bos_token_id  # the GGUF's add-BOS rule survived conversion
