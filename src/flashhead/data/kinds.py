"""The kinds of token in a vocabulary: where the model's own calibration text starts.

    token_kinds(tokenizer, vocab) -> {kind: token ids}

A kind is the Unicode script of a token's first letter ("LATIN", "CYRILLIC", "CJK", ...), with
"-upper" for tokens of two or more letters all in capitals, or "digit", "symbol", "space", "bytes"
(a fragment of a multi-byte character) for tokens without letters. hidden.sampled starts each of
its sequences from a few tokens of one kind, every kind alike: the calibration then covers every
script and register the vocabulary was made for, not only the text the model writes from BOS,
whatever the user's language (docs/FIDELITY.md: a build that never saw Russian text agrees 99.0%
on it with these starts, 89.5% with BOS starts; SmolLM2-135M).

`accents=True` (an experiment, not the default: experiments/FINDINGS.md, "Measured, not adopted") also
splits Latin by the first letter beyond ASCII ("LATIN ü", "LATIN é", ...); a rare one stays "LATIN".
"""
from __future__ import annotations

import unicodedata

import torch

MIN_KIND = 10   # smaller kinds (a handful of Thai or Hangul tokens in an English vocabulary) are left out


def kind_of(text: str, accents: bool = False) -> str:
    if "\ufffd" in text:
        return "bytes"
    for ch in text:
        if ch.isalpha():
            try:
                script = unicodedata.name(ch).split()[0]
            except ValueError:
                script = "unnamed"
            letters = sum(c.isalpha() for c in text)
            if letters >= 2 and text.isupper():
                return script + "-upper"
            if accents and script == "LATIN":
                accent = next((c for c in text if c.isalpha() and ord(c) > 127), None)
                if accent is not None and unicodedata.name(accent, "").startswith("LATIN"):
                    low = accent.lower()
                    return "LATIN " + (low if len(low) == 1 else accent)
            return script
    if any(ch.isdigit() for ch in text):
        return "digit"
    return "symbol" if text.strip() else "space"


def token_kinds(tokenizer, vocab: int, accents: bool = False) -> dict[str, torch.Tensor]:
    """Token ids [n_kind] int64 of every kind with at least MIN_KIND tokens among the first `vocab`
    ids (the head's rows), special tokens excluded."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(min(len(tokenizer), vocab)) if i not in special]
    groups: dict[str, list[int]] = {}
    backend = getattr(tokenizer, "backend_tokenizer", None)     # a fast tokenizer: decoded in Rust, 2x faster
    texts = (backend.decode_batch([[i] for i in ids], skip_special_tokens=False) if backend is not None
             else tokenizer.batch_decode([[i] for i in ids]))
    for i, text in zip(ids, texts):
        groups.setdefault(kind_of(text, accents), []).append(i)
    for k in [k for k in groups if k.startswith("LATIN ") and len(groups[k]) < MIN_KIND]:
        groups.setdefault("LATIN", []).extend(groups.pop(k))      # a rare accent stays Latin
    return {k: torch.tensor(v) for k, v in sorted(groups.items()) if len(v) >= MIN_KIND}
