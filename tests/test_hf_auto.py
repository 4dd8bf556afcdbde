"""A FlashHead directory through transformers' Auto API, pipeline and save_pretrained (SmolLM2)."""
import json
import subprocess
import sys

import pytest
import torch

from flashhead import FlashHeadError
from flashhead.integrations import hf

PROMPT = "The capital of France is"


def _greedy(model, tok, n=8):
    ids = tok(PROMPT, return_tensors="pt")
    return model.generate(**ids, max_new_tokens=n, do_sample=False)[0].tolist()


@pytest.fixture(scope="module")
def reference(smollm2_flashhead_dir):
    model, tok = hf.load(smollm2_flashhead_dir)
    return model, tok, _greedy(model, tok)


def test_build_marks_model_type(smollm2_flashhead_dir):
    config = json.loads((smollm2_flashhead_dir / "config.json").read_text())
    assert config["model_type"] == "flashhead_llama"
    assert config["flash_head_base_model_type"] == "llama"
    assert config["architectures"] == ["FlashHeadLlamaForCausalLM"]


def test_plain_transformers_refuses_the_directory(smollm2_flashhead_dir):
    """Without flashhead's registration transformers stops; it never loads the dense head."""
    code = ("import sys, transformers\n"
            "for load in (lambda d: transformers.AutoModelForCausalLM.from_pretrained(d),\n"
            "             lambda d: transformers.pipeline('text-generation', model=d)):\n"
            "    try:\n"
            "        load(sys.argv[1]); print('LOADED')\n"
            "    except ValueError as e:\n"
            "        print('REFUSED', str(e).splitlines()[0])\n"
            "assert 'flashhead.integrations.hf' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code, str(smollm2_flashhead_dir)],
                         capture_output=True, text=True, timeout=300)
    lines = [l for l in out.stdout.splitlines() if l.startswith(("LOADED", "REFUSED"))]
    assert len(lines) == 2, out.stderr[-2000:]
    for line in lines:
        assert line.startswith("REFUSED") and "flashhead_llama" in line, line


def test_auto_model_and_pipeline_load_flashhead(smollm2_flashhead_dir, reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    _, _, tokens = reference
    model = AutoModelForCausalLM.from_pretrained(smollm2_flashhead_dir)
    assert isinstance(model.lm_head, hf.FlashHeadLMHead)
    tok = AutoTokenizer.from_pretrained(smollm2_flashhead_dir)
    assert _greedy(model, tok) == tokens
    pipe = pipeline("text-generation", model=str(smollm2_flashhead_dir))
    assert isinstance(pipe.model.lm_head, hf.FlashHeadLMHead)
    text = pipe(PROMPT, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text == tok.decode(tokens, skip_special_tokens=True)


def test_probes_from_pretrained_kwarg(smollm2_flashhead_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_flashhead_dir, flash_head_probes=64)
    assert model.lm_head.flashhead.probes == 64


def test_dense_is_explicit(smollm2_flashhead_dir):
    model, _ = hf.load(smollm2_flashhead_dir, dense=True)
    assert type(model.lm_head) is torch.nn.Linear and not type(model).__name__.startswith("FlashHead")


def test_save_pretrained_round_trip(reference, tmp_path):
    model, tok, tokens = reference
    out = tmp_path / "saved"
    out.mkdir()
    (out / "README.md").write_text("# My model\n")
    model.save_pretrained(out)
    model.save_pretrained(out)                    # again: the FlashHead section is replaced, not added
    tok.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["FlashHeadLlamaForCausalLM"]
    assert config["model_type"] == "flashhead_llama" and config["flash_head_cache_dir"] == "flash_head_assets"
    src = model._flash_head_assets
    for name in ("flashhead.json", "clustering_cache.safetensors"):
        assert (out / "flash_head_assets" / name).read_bytes() == (src / name).read_bytes()
    card = (out / "README.md").read_text()
    assert card.startswith("# My model") and card.count("## FlashHead") == 1
    assert "agreement with the dense head" in card
    again, tok2 = hf.load(out)                    # checks the fingerprint against the saved weights
    assert isinstance(again.lm_head, hf.FlashHeadLMHead)
    assert _greedy(again, tok2) == tokens


def test_save_pretrained_refuses_a_changed_head(smollm2_flashhead_dir, tmp_path):
    model, _ = hf.load(smollm2_flashhead_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    with pytest.raises(FlashHeadError, match="fingerprint"):
        model.save_pretrained(tmp_path / "changed")
    assert not (tmp_path / "changed").exists()


def test_to_dtype_rebuilds_flashhead(smollm2_flashhead_dir):
    model, _ = hf.load(smollm2_flashhead_dir)
    model.to(torch.bfloat16)
    head = model.lm_head
    assert head.flashhead.weight.dtype == torch.bfloat16
    assert head.flashhead.weight.data_ptr() == head.weight.data_ptr()
