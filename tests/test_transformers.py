"""FlashHead inside transformers on the real SmolLM2-135M (tied head, Llama family)."""
import pytest
import torch

from flashhead import FlashHeadError
from flashhead.integrations import hf

PROMPTS = ["The capital of France is", "In the beginning there was"]


@pytest.fixture(scope="module")
def loaded(smollm2_flashhead_dir):
    return hf.load(smollm2_flashhead_dir)


def hf_generate(model, tok, prompts, max_new_tokens=16, temperature=0.0, top_p=1.0, top_k=0, seed=None):
    """transformers' own `generate()` on a batch (left-padded): the integration as users run it."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None) if temperature == 0 else \
        dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **kw)
    return out[:, enc["input_ids"].shape[1]:].tolist()


def _run(model, tok, **kw):
    return hf_generate(model, tok, PROMPTS, **kw)


def test_head_is_swapped_and_shares_the_weight(loaded):
    model, _ = loaded
    head = model.lm_head
    assert isinstance(head, hf.FlashHeadLMHead)
    emb = model.get_input_embeddings().weight
    # tied: the head, the embedding and FlashHead's weight share one storage; on the CPU FlashHead
    # also keeps the rows in cluster order (one more head: head.py `arrange`)
    assert head.weight is emb and head.flashhead.weight.data_ptr() == emb.data_ptr()
    assert head.flashhead.arranged_bytes == emb.numel() * emb.element_size()   # 49,152 = 3,072 x 16


def test_rows_in_place_on_request(loaded, smollm2_flashhead_dir):
    """`flash_head_arrange=False` (from_pretrained; `hf.load(..., arrange=False)`): no copy of the
    rows, and the same logits and tokens."""
    model, tok = loaded
    plain, _ = hf.load(smollm2_flashhead_dir, arrange=False)
    assert not plain.lm_head.flashhead.arranged and plain.lm_head.flashhead.arranged_bytes == 0
    h = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.lm_head(h), model.lm_head(h))
    assert _run(plain, tok) == _run(model, tok)


def test_all_probes_greedy_equals_dense(loaded):
    model, tok = loaded
    head = model.lm_head
    head.use_flashhead = False
    dense = _run(model, tok)
    head.use_flashhead = True
    steps = head.flashhead.stats["flashhead_steps"]
    with head.flashhead.flashhead_only(head.flashhead.num_clusters):
        assert _run(model, tok) == dense      # batch of 2 with left padding, 16 greedy tokens
        assert head.flashhead.stats["flashhead_steps"] >= steps + 16   # FlashHead ran, not the rule


def test_sampling_reproducible_by_seed(loaded):
    model, tok = loaded
    a = _run(model, tok, temperature=0.9, top_p=0.95, seed=1)
    b = _run(model, tok, temperature=0.9, top_p=0.95, seed=1)
    c = _run(model, tok, temperature=0.9, top_p=0.95, seed=2)
    assert a == b and a != c


def test_top_k_one_sampling_equals_greedy(loaded):
    model, tok = loaded
    assert _run(model, tok, temperature=0.7, top_k=1, seed=5) == _run(model, tok)


def test_nan_hidden_states_are_a_clear_error(loaded):
    model, _ = loaded
    with pytest.raises(FlashHeadError, match="NaN"):
        model.lm_head(torch.full((1, 1, model.config.hidden_size), float("nan")))


def test_dense_flag_loads_plain_head(smollm2_flashhead_dir):
    model, _ = hf.load(smollm2_flashhead_dir, dense=True)
    assert isinstance(model.lm_head, torch.nn.Linear)


def test_dense_rule_threshold_and_switch(smollm2_flashhead_dir, monkeypatch):
    """transformers' dense rule on the CPU: dense above 8.0 x V stage-2 rows per step in fp32
    (measured crossover, integrations/hf.py); FLASHHEAD_DENSE_RULE=0 keeps FlashHead at every
    batch size."""
    model, _ = hf.load(smollm2_flashhead_dir)
    head = model.lm_head.flashhead
    assert head.dense_above == hf.CROSSOVER["cpu"] and head.weight.dtype == torch.float32
    rows = head.probes * head.cluster_size
    n_dense = int(head.dense_above * head.vocab) // rows + 1   # the smallest batch above the crossover
    h = torch.randn(n_dense, model.config.hidden_size)
    before = dict(head.stats)
    model.lm_head(h[:1])
    model.lm_head(h)
    assert head.stats["flashhead_steps"] == before["flashhead_steps"] + 1
    assert head.stats["dense_steps"] == before["dense_steps"] + 1
    monkeypatch.setenv("FLASHHEAD_DENSE_RULE", "0")
    model, _ = hf.load(smollm2_flashhead_dir)
    assert model.lm_head.flashhead.dense_above is None
