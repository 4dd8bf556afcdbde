"""Real vLLM (CPU), tensor parallel 2: FlashHead on vLLM's vocabulary shards (one core per rank).

SmolLM2's 9 attention heads do not divide by 2, Gemma-3-270M's engines cost minutes here: the model
is a small Llama with random weights (2 layers, 2 heads of 64, SmolLM2's vocabulary and tokenizer),
built once; weights do not matter for equality between TP 1, TP 2 and the dense head. Its head rows
are drawn with std 1, so logits spread widely and no greedy step is a near-tie between stacks.
"""
import gc
import re

import pytest
import torch

pytest.importorskip("vllm")

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "Water boils at"]
ENGINE = dict(kv_cache_memory_bytes=256 * 2**20, max_model_len=128, enforce_eager=True, seed=0, dtype="float32")
NEW = 16


@pytest.fixture(scope="module", autouse=True)
def tp_environment():
    """FlashHead on every step (the rule would run 4-row steps dense), one core per rank (vLLM CPU
    stops with "Not enough allowed NUMA nodes" otherwise). The engine's processes inherit both."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLASHHEAD_DENSE_RULE", "0")
        mp.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
        yield


@pytest.fixture(scope="module")
def tiny_dir(smollm2_hf_dir, tmp_path_factory):
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    cfg = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 1.0)
    model.save_pretrained(out)
    for f in smollm2_hf_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.suffix == ".jinja":
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def tiny_flashhead_dir(tiny_dir):
    from flashhead.build import build

    return build(tiny_dir, tiny_dir.parent / "tiny-flashhead", progress=False, positions=1024, probes=96)


@pytest.fixture(scope="module")
def dense_tokens(tiny_dir):
    """The dense model's greedy tokens (transformers, fp32): the exact head."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    out = []
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        g = model.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
        out.append(g[0, ids.shape[1]:].tolist())
    return out


def _greedy(model_dir, tp, **kw):
    from vllm import LLM, SamplingParams

    llm = LLM(str(model_dir), tensor_parallel_size=tp, **ENGINE, **kw)
    sp = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)
    out = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    return out


@pytest.fixture(scope="module")
def tp1_tokens(tiny_flashhead_dir):
    """TP 1 with its engine core in this process (~10 s instead of ~33 s to start; the TP 2 engines
    are vLLM's processes), on both cores; vLLM's CPU worker replaces `torch.set_num_threads` by a
    no-op once it binds its threads: put back after."""
    import os

    cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")
        mp.setattr(torch, "set_num_threads", torch.set_num_threads)
        out = _greedy(tiny_flashhead_dir, 1)
    torch.set_num_threads(threads)
    assert os.sched_getaffinity(0) == cores       # the later tests keep every core
    return out


def test_tp2_equals_tp1_and_runs_on_both_ranks(tiny_flashhead_dir, tp1_tokens, dense_tokens, capfd):
    tp2 = _greedy(tiny_flashhead_dir, 2)
    log = capfd.readouterr()
    log = log.out + log.err
    assert tp2 == tp1_tokens
    # the default probes (96 of 3,072 clusters) on a random head change the text: FlashHead ran
    assert tp2 != dense_tokens
    for rank, (start, end) in enumerate([(0, 24576), (24576, 49152)]):
        assert re.search(rf"Worker_TP{rank}.*FlashHead: model=.*shard=\[{start}, {end}\) of 2 ranks", log), log[-3000:]
        assert re.search(rf"Worker_TP{rank}.*FlashHead steps: flashhead=10 dense=0", log), log[-3000:]


def test_tp2_all_probes_equals_dense(tiny_flashhead_dir, dense_tokens):
    assert _greedy(tiny_flashhead_dir, 2, hf_overrides={"flash_head_probes": 3072}) == dense_tokens
