"""Kinds of token (kinds.py) and the model's own calibration text started from every kind."""
import pytest
import torch

from flashhead.data.kinds import MIN_KIND, kind_of, token_kinds


@pytest.mark.parametrize("text,kind", [(" PROVIDED", "LATIN-upper"), (" Provided", "LATIN"), ("A", "LATIN"),
                                       ("при", "CYRILLIC"), ("日本", "CJK"), (" 42", "digit"),
                                       ("  ", "space"), ("{", "symbol"), ("\ufffd", "bytes")])
def test_kind_of(text, kind):
    assert kind_of(text) == kind


@pytest.mark.parametrize("text,kind", [(" für", "LATIN ü"), ("Straße", "LATIN ß"), (" École", "LATIN é"),
                                       (" ÉCOLE", "LATIN-upper"), (" Provided", "LATIN"), ("при", "CYRILLIC"),
                                       ("İ", "LATIN İ")])
def test_kind_of_accented_letters(text, kind):
    """With accents, a Latin token holding a letter beyond ASCII is the kind of that letter
    (lower case): the starts then reach the languages that letter belongs to."""
    assert kind_of(text, accents=True) == kind


def test_smollm2_kinds_partition_its_vocabulary(smollm2_hf_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    kinds = token_kinds(tok, 49152)
    ids = torch.cat(list(kinds.values()))
    assert ids.unique().numel() == ids.numel()                       # each token in one kind
    assert not set(ids.tolist()) & set(tok.all_special_ids)
    assert all(v.numel() >= MIN_KIND for v in kinds.values())
    # an English vocabulary still has Cyrillic, Greek and CJK tokens: each gets its share of starts
    assert {"LATIN", "LATIN-upper", "CYRILLIC", "GREEK", "CJK", "symbol"} <= set(kinds)
    assert ids.numel() > 0.99 * 49152 - len(tok.all_special_ids) - 50   # all but a few rare-script tokens
    # with accents the Latin tokens holding é form a kind of their own (SmolLM2: the only accented
    # letter with >= MIN_KIND tokens); still a partition of the same tokens
    accented = token_kinds(tok, 49152, accents=True)
    both = torch.cat(list(accented.values()))
    assert "LATIN é" in accented and both.unique().numel() == both.numel()
    assert set(both.tolist()) == set(ids.tolist())


def test_self_samples_from_every_kind_reach_other_scripts(smollm2_hf_dir):
    """The model's own text started from BOS alone is English; started from tokens of every kind
    it writes other scripts too (what a build calibrated on it then covers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flashhead.data.hidden import sampled

    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()

    def non_latin(starts):
        h, y = sampled(model, tok, 768, batch=24, length=32, starts=starts, progress=False)
        assert h.shape == (768, 576) and y.shape == (768,) and torch.isfinite(h).all()
        return sum(kind_of(t) not in ("LATIN", "LATIN-upper", "symbol", "space", "digit")
                   for t in tok.batch_decode(y[:, None])) / y.numel()

    bos, every = non_latin(0), non_latin(3)
    # measured: BOS 0.13%, every kind 15.5% of drawn tokens in other scripts or byte fragments
    assert every > 0.05 and every > 4 * bos, (bos, every)
