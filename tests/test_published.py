"""Directories in the layout published FlashHead checkpoints use (index.py: no flashhead.json,
centroids [1, 1, d, K] or [d, K], cosine stage 1, unequal clusters, n_probes in config.json),
written from SmolLM2's real head (conftest.write_published), in transformers; and
`flashhead upgrade`. vLLM on the same directory: tests/test_vllm_llm.py."""
import json
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import write_published
from flashhead import FlashHead, FlashHeadError
from flashhead.cli.main import main
from flashhead.tools.evaluate import evaluate_hidden, suite_texts
from flashhead.data.hidden import teacher_forced
from flashhead.integrations import hf
from flashhead.core.layout import load_assets

PROMPTS = ["The capital of France is", "def fibonacci(n):"]


def _tokens(model, tok, n=12):
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return out[:, enc["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module")
def eval_states(smollm2_hf_dir):
    """Teacher-forced hidden states of the dense model on the docs domain's eval documents."""
    model, tok = hf.load(smollm2_hf_dir, dense=True)
    return teacher_forced(model, tok, suite_texts(model, tok, "docs")[:40], 1024)


def test_published_directory_loads_as_published(smollm2_published_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="flashhead"):
        model, tok = hf.load(smollm2_published_dir)
        hf.load(smollm2_published_dir)
    head = model.lm_head.flashhead
    assert isinstance(model.lm_head, hf.FlashHeadLMHead)
    assert head.config.stage1 == "cosine" and head.probes == head.num_clusters // 16 == 192
    sizes = torch.bincount(head.assignments, minlength=head.num_clusters)
    assert int(sizes.max()) == head.cluster_size > 16 and int(sizes.min()) < 16     # unequal, padded
    warned = [r for r in caplog.records if "no fingerprint" in r.getMessage()]
    assert len(warned) == 1                       # logged once, not per load


def test_all_probes_equal_dense_and_cosine_ranking(smollm2_published_dir, smollm2_hf_dir, eval_states):
    dense, tok = hf.load(smollm2_hf_dir, dense=True)
    model, _ = hf.load(smollm2_published_dir)
    head = model.lm_head.flashhead
    h = eval_states[0][:64]
    with head.flashhead_only(head.num_clusters):        # every cluster, padded slots included
        torch.testing.assert_close(head(h), h @ model.lm_head.weight.detach().T, rtol=1e-5, atol=1e-4)
        assert _tokens(model, tok) == _tokens(dense, tok)
    # stage 1 ranks by the cosine to the stored (normalised) centroids, whatever their norms
    c = load_file(str(smollm2_published_dir / "flash_head_assets" / "clustering_cache.safetensors"))["centroids"]
    c = c.reshape(c.shape[-2], c.shape[-1]).T
    want = h @ torch.nn.functional.normalize(c, dim=1).T
    torch.testing.assert_close(head.scores(h), want, rtol=1e-5, atol=1e-5)


def test_centroid_shapes_and_n_probes(smollm2_hf_dir, smollm2_flashhead_dir, smollm2_published_dir, tmp_path):
    flat = write_published(smollm2_hf_dir, tmp_path / "flat", smollm2_flashhead_dir, n_probes=77, flat=True)
    a, b = load_assets(flat), load_assets(smollm2_published_dir)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.assignments, b.assignments)
    assert a.config.probes == 77
    config = json.loads((flat / "config.json").read_text())
    config["n_clusters"] = 1000
    (flat / "config.json").write_text(json.dumps(config))
    with pytest.raises(FlashHeadError, match="n_clusters=1000"):
        load_assets(flat)


def test_our_directory_reads_in_the_published_layout(smollm2_flashhead_dir):
    """What a reader of the published layout sees in our directories: the two tensors under their
    names and shapes (plus token_offsets and flashhead.json, which it ignores)."""
    with safe_open(str(smollm2_flashhead_dir / "flash_head_assets" / "clustering_cache.safetensors"), "pt") as f:
        c, a = f.get_tensor("centroids"), f.get_tensor("cluster_assignments")
    assert c.shape == (576, 3072) and c.dtype == torch.float32
    assert a.shape == (49152,) and a.dtype == torch.int64 and int(a.max()) == 3071


def test_upgrade_adds_the_record_and_keeps_the_clusters(smollm2_hf_dir, smollm2_flashhead_dir, smollm2_head,
                                                        eval_states, tmp_path, capsys):
    d = write_published(smollm2_hf_dir, tmp_path / "pub", smollm2_flashhead_dir)
    path = d / "flash_head_assets" / "clustering_cache.safetensors"
    before = load_file(str(path))
    H, T = eval_states
    old = evaluate_hidden(FlashHead(smollm2_head, load_assets(d)), smollm2_head, H, T, [192])[0]
    assert main(["upgrade", str(d), "--calibrate-on", "docs", "--calibration-positions", "1024", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["build"]["calibration"]["held_out_positions"] == 256
    after = load_file(str(path))
    assert all(torch.equal(before[k], after[k]) for k in before) and after["token_offsets"].shape == (49152,)
    index = load_assets(d)
    assert index.fingerprint is not None and index.config.stage1 == "cosine" and index.config.probes == 192
    assert index.config.exact_tokens                                 # the end tokens, now always exact
    config = json.loads((d / "config.json").read_text())             # marked as our builds are
    assert config["model_type"] == "flashhead_llama" and config["flash_head_cache_dir"] == "flash_head_assets"
    new = evaluate_hidden(FlashHead(smollm2_head, index), smollm2_head, H, T, [192])[0]
    # measured once with the default (suite) calibration at 2,048 positions: TV 0.110 -> 0.103,
    # perplexity 59.5 -> 49.2 (dense 22.3) on docs' eval documents, the crude one-pass clusters of
    # the fixture (not a real build); here the calibration is docs' own calibration documents
    assert new["tv_distance"] < old["tv_distance"] and new["ppl_flashhead"] < old["ppl_flashhead"]
    with pytest.raises(FlashHeadError, match="fingerprint mismatch"):   # now a changed head is refused
        FlashHead(smollm2_head.roll(1, dims=0), index)
    assert main(["upgrade", str(d)]) == 2                            # twice: one clear line
    assert "nothing to upgrade" in capsys.readouterr().err
