"""The languages check: running prose in languages and scripts no calibration source covers.

Source: Debian's `installation-guide-amd64` (the Debian GNU/Linux Installation Guide, HTML, one
translation per language; GPL-2, /usr/share/doc/installation-guide-amd64/copyright), a book of
running prose written by its translators, not UI strings. The default build calibrates on English,
German, Russian, Spanish and Italian text (corpus.py) and on the model's own samples; none of the
languages here is among them. Bulgarian (Cyrillic) comes from Debian's `fortunes-bg` (GPL-1+), an
optional calibration source a default build does not take.

| code  | language   | script    |     | code  | language   | script    |
|-------|------------|-----------|-----|-------|------------|-----------|
| ca    | Catalan    | Latin     |     | ko    | Korean     | Hangul    |
| cs    | Czech      | Latin     |     | nl    | Dutch      | Latin     |
| da    | Danish     | Latin     |     | pt    | Portuguese | Latin     |
| el    | Greek      | Greek     |     | ro    | Romanian   | Latin     |
| fr    | French     | Latin     |     | sv    | Swedish    | Latin     |
| id    | Indonesian | Latin     |     | vi    | Vietnamese | Latin     |
| ja    | Japanese   | Kana, Han |     | zh_CN | Chinese    | Han       |
| bg    | Bulgarian  | Cyrillic  |     |       |            |           |

A paragraph the translators left in English (the English guide's text, or four or more English
function words) is dropped.
Nothing here ever enters a build: every text is held out.
"""
from __future__ import annotations

import hashlib
import html
import re
from pathlib import Path

from ..core.config import FlashHeadError
from . import corpus

GUIDE_DIR = Path("/usr/share/doc/installation-guide-amd64")
PACKAGE = "installation-guide-amd64"
GUIDE = ("ca", "cs", "da", "el", "fr", "id", "ja", "ko", "nl", "pt", "ro", "sv", "vi", "zh_CN")
LANGUAGES = GUIDE + ("bg",)
SCRIPTS = {"el": "Greek", "ja": "Kana, Han", "ko": "Hangul", "zh_CN": "Han", "bg": "Cyrillic"}
TEXT_CHARS = 2400      # a text: a section's paragraphs up to about this many characters


def _paragraphs(path: Path) -> list[str]:
    raw = path.read_text(errors="replace")
    paras = re.findall(r"<p[^>]*>(.*?)</p>", raw, flags=re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", "", p)).split()) for p in paras]


def texts(lang: str) -> list[str]:
    """Running texts of one language: a section's paragraphs, in a stable order that mixes the
    book's chapters (a hash of each text), so the first N positions sample the whole book."""
    if lang not in LANGUAGES:
        raise FlashHeadError(f"unknown language {lang!r}: choose one of {', '.join(LANGUAGES)}")
    if lang == "bg":
        return corpus.load("eval", "bulgarian") + corpus.load("calibration", "bulgarian")
    if not (GUIDE_DIR / lang).is_dir():
        raise FlashHeadError(f"no text at {GUIDE_DIR / lang}: install Debian's {PACKAGE} "
                             f"(apt-get install {PACKAGE})")
    english = {p for f in (GUIDE_DIR / "en").glob("*.html") for p in _paragraphs(f)}
    stop = re.compile(r"\b(the|and|you|of|to|is|with)\b")
    out = []
    for f in sorted((GUIDE_DIR / lang).glob("*.html")):
        cur = ""
        for p in _paragraphs(f):
            if len(p) < 40 or p in english or len(stop.findall(p)) >= 4:   # left in English
                continue
            cur = f"{cur}\n\n{p}" if cur else p
            if len(cur) >= TEXT_CHARS:
                out.append(cur)
                cur = ""
        if len(cur) >= 400:
            out.append(cur)
    return sorted(out, key=lambda t: hashlib.sha1(t.encode()).digest())
