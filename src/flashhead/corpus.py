"""Real text for evaluation and calibration, written by nobody on this project.

Source: Debian's `fortunes` and `fortunes-min` packages (BSD fortune(6) data files: quotations,
literature, science, wisdom, ...; BSD license, see /usr/share/doc/fortunes/copyright), installed
with `apt-get install fortunes fortunes-min` (as root; CI does it). Each file holds entries separated by `%` lines.

Entries are split deterministically by a hash of their text: `eval` (held out: used to measure
fidelity, never to build or tune) and `calibration` (may be used to tune a build).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .config import FlashHeadError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Prose-like collections (no ASCII art, no code, no lists of jokes in dialect).
FILES = ["literature", "wisdom", "people", "science", "education", "politics", "law", "medicine",
         "work", "humorists", "platitudes", "songs-poems", "love", "food", "pets", "sports"]
SPLITS = ("eval", "calibration")


def _entries(path: Path) -> list[str]:
    raw = path.read_bytes().decode("utf-8", errors="replace")
    raw = re.sub(r".\x08", "", raw)  # overstrike (bold/underline) sequences
    out = []
    for entry in re.split(r"^%\s*$", raw, flags=re.M):
        text = " ".join(entry.split())  # one paragraph per entry
        if len(text) >= 80:
            out.append(text)
    return out


def load(split: str = "eval", directory: Path = FORTUNES_DIR) -> list[str]:
    """Texts of one split, in a stable order."""
    if split not in SPLITS:
        raise FlashHeadError(f"split must be one of {SPLITS}, got {split!r}")
    if not directory.is_dir():
        raise FlashHeadError(f"no text corpus at {directory}: install Debian's fortunes package "
                             f"(apt-get install fortunes fortunes-min) or pass your own files with --text")
    texts = []
    for name in FILES:
        path = directory / name
        if path.is_file():
            texts += _entries(path)
    want = 0 if split == "eval" else 1
    return [t for t in texts if hashlib.sha1(t.encode()).digest()[0] % 2 == want]


def read_files(paths) -> list[str]:
    """User text files: one text per blank-line separated paragraph."""
    texts = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FlashHeadError(f"text file not found: {p}")
        for para in re.split(r"\n\s*\n", p.read_text(errors="replace")):
            para = " ".join(para.split())
            if para:
                texts.append(para)
    return texts
