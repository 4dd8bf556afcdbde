"""Real text for evaluation and calibration, written by nobody on this project: the domain suite.

Every domain is text installed from a package, split into `eval` (held out: measures fidelity) and
`calibration` (may fit a build) **by document**, by a hash of the document's name, never by
sentence: no document has text on both sides. Texts are a document's paragraphs (or chunks).

| domain  | what                              | source (package) and licence                                |
|---------|-----------------------------------|-------------------------------------------------------------|
| prose   | English quotations, literature    | Debian `fortunes`, `fortunes-min`: BSD fortune(6) data, BSD |
| docs    | technical documentation           | CPython's `pydoc_data.topics` (the language reference), PSF |
| code    | Python and C source               | CPython's standard library `*.py` (PSF); /usr/include `*.h` |
|         |                                   | from Debian's libc6-dev & linux-libc-dev (LGPL-2.1+, GPL-2) |
| legal   | licences                          | Debian `base-files` /usr/share/common-licenses (each        |
|         |                                   | licence's own terms, verbatim copying allowed) and the      |
|         |                                   | licence texts in /usr/share/doc/*/copyright (each package's |
|         |                                   | own; their file lists and holders left out)                 |
| german  | German quotations, poems          | Debian `fortunes-de`, GPL-2+                                |
| russian | Russian quotations (Cyrillic)     | Debian `fortunes-ru`, GPL-2                                 |
| chat    | dialogue in the model's own chat  | questions: the Debian FAQ (Debian `debian-faq`, verbatim    |
|         | template                          | copying allowed); answers: the model itself, dense, greedy  |

Not in the suite, calibration only (`EXTRA`): Spanish and Italian fortunes (Debian `fortunes-es`,
GPL-2+; `fortunes-it`, GPL-2+). Installed for breadth experiments (`LANGUAGES`, not calibrated on by
default, docs/FIDELITY.md): Polish (`fortunes-pl`, GPL-2+), Czech (`fortunes-cs`, GPL), Bulgarian
(`fortunes-bg`, GPL-1+, Cyrillic) and Chinese (`fortunes-zh`: fortunes, Tang and Song poems, GPL-3+).
`translations`: the translated messages of the installed packages' gettext catalogs
(/usr/share/locale/*/LC_MESSAGES/*.mo; Debian `iso-codes` among others, each package's own licence
in /usr/share/doc/PACKAGE/copyright, GPL or LGPL for most), ~120 languages here, never German,
Russian or English; one document per catalog. Both are `OPTIONAL` calibration sources.
`scripts/setup.sh` installs the Debian packages.
"""
from __future__ import annotations

import gzip
import hashlib
import re
import sysconfig
from pathlib import Path

from ..core.config import FlashHeadError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Prose-like English collections (no ASCII art, no code, no lists of jokes in dialect).
FILES = ["literature", "wisdom", "people", "science", "education", "politics", "law", "medicine",
         "work", "humorists", "platitudes", "songs-poems", "love", "food", "pets", "sports"]
SPLITS = ("eval", "calibration")
SUITE = ("prose", "docs", "code", "legal", "german", "russian", "chat")
EXTRA = ("spanish", "italian")
LANGUAGES = ("polish", "czech", "bulgarian", "chinese")
# Breadth of languages from the installed packages' own message catalogs (gettext .mo files).
# The suite's scored languages are never among them (German, Russian) nor English: a build
# calibrated on them has still never seen the German or Russian domain.
LOCALE_DIR = Path("/usr/share/locale")
TRANSLATIONS_LEFT_OUT = ("de", "ru", "en")
# At most this many catalogs are read (a sample by a hash of their names, both splits together):
# a build reads a few thousand positions of them; reading all (2,851 here, 49 MB of text) took 8 s,
# 512 of them 0.8 s (the 2-core host, with another job running).
CATALOGS = 512
DOMAINS = SUITE + EXTRA
# Calibration sources a build takes when named (`--calibrate-on suite translations`), not by default:
# measured on both models, they lift some unseen languages and cost English text (docs/FIDELITY.md).
OPTIONAL = LANGUAGES + ("translations",)
PACKAGES = {"prose": "fortunes fortunes-min", "german": "fortunes-de", "russian": "fortunes-ru",
            "spanish": "fortunes-es", "italian": "fortunes-it", "chat": "debian-faq", "polish": "fortunes-pl",
            "czech": "fortunes-cs", "bulgarian": "fortunes-bg", "chinese": "fortunes-zh"}
# fortunes collections in a folder of their own (every file), or named files of the top folder
FORTUNE_FOLDERS = {"german": "de", "russian": "ru", "spanish": "es", "italian": "it", "polish": "pl",
                   "czech": "cs", "bulgarian": "bg"}
CHINESE = ["chinese", "tang300", "song100"]
MIN_CHARS = 80          # shorter texts carry too few positions to be worth a forward pass
CHUNK_CHARS = 1200      # code and long paragraphs: cut into chunks of about this size


def _in_split(name: str, split: str) -> bool:
    if split not in SPLITS:
        raise FlashHeadError(f"split must be one of {SPLITS}, got {split!r}")
    return hashlib.sha1(name.encode()).digest()[0] % 2 == (0 if split == "eval" else 1)


def _fortune_entries(path: Path) -> list[str]:
    raw = path.read_bytes().decode("utf-8", errors="replace")
    raw = re.sub(r".\x08", "", raw)  # overstrike (bold/underline) sequences
    raw = re.sub(r"\x1b\[[0-9;]*m", "", raw)  # terminal colours (fortunes-zh)
    return [t for t in (" ".join(e.split()) for e in re.split(r"^%\s*$", raw, flags=re.M)) if len(t) >= MIN_CHARS]


def _fortunes(folder: Path, names: list[str] | None, package: str) -> list[tuple[str, list[str]]]:
    """Documents of a fortunes collection: one per entry (an entry is a whole quotation or poem)."""
    if not folder.is_dir():
        raise FlashHeadError(f"no text at {folder}: install Debian's {package} (apt-get install {package})")
    if names is None:  # UTF-8 copies (.u8) where the package ships them (fortunes-pl's are empty), else the file
        stems = sorted({p.name.removesuffix(".u8") for p in folder.iterdir()
                        if p.is_file() and p.suffix != ".dat"})
        u8 = [folder / (s + ".u8") for s in stems]
        paths = [u if u.is_file() and u.stat().st_size else folder / s for s, u in zip(stems, u8)]
    else:
        paths = [folder / n for n in names if (folder / n).is_file()]
    return [(t, [t]) for p in paths for t in _fortune_entries(p)]


def _paragraphs(text: str, keep_lines: bool = False) -> list[str]:
    """Blank-line separated paragraphs, merged or cut to about CHUNK_CHARS."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n") if keep_lines else " ".join(para.split())
        if not para.strip():
            continue
        cur = f"{cur}\n\n{para}" if cur else para
        if len(cur) >= CHUNK_CHARS // 2:
            out += [cur[i:i + CHUNK_CHARS] for i in range(0, len(cur), CHUNK_CHARS)]
            cur = ""
    if cur:
        out.append(cur)
    return [t for t in out if len(t) >= MIN_CHARS]


def _files(paths, keep_lines: bool) -> list[tuple[str, list[str]]]:
    docs = []
    for p in sorted(paths):
        raw = gzip.open(p).read() if p.suffix == ".gz" else p.read_bytes()
        texts = _paragraphs(raw.decode("utf-8", errors="replace"), keep_lines)
        if texts:
            docs.append((str(p), texts))
    return docs


def _docs() -> list[tuple[str, list[str]]]:
    import pydoc_data.topics as topics

    return [(k, t) for k in sorted(topics.topics) if (t := _paragraphs(topics.topics[k]))]


def _code() -> list[tuple[str, list[str]]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return (_files([p for p in stdlib.glob("*.py")], keep_lines=True)
            + _files([p for p in Path("/usr/include").glob("*.h")], keep_lines=True))


# Machine-readable copyright stanzas (file lists, holders, e-mail addresses) are metadata, not
# legal prose: only the licence texts of the copyright files are kept.
_DEP5_FIELDS = ("Files:", "Copyright:", "Format:", "Upstream-", "Source:", "Comment:", "Files-Excluded:",
                "Disclaimer:")


def _legal() -> list[tuple[str, list[str]]]:
    """The licences in /usr/share/common-licenses, and the licence paragraphs of the installed
    packages' copyright files (their `License:` texts and other plain paragraphs)."""
    docs = _files([p for p in Path("/usr/share/common-licenses").iterdir() if p.is_file()], keep_lines=False)
    for p in sorted(Path("/usr/share/doc").glob("*/copyright")):
        paras = re.split(r"\n\s*\n", p.read_bytes().decode("utf-8", errors="replace"))
        keep = [q for q in paras if "@" not in q and not any(
            line.lstrip().startswith(_DEP5_FIELDS) for line in q.splitlines())]
        texts = _paragraphs("\n\n".join(keep))
        if texts:
            docs.append((str(p), texts))
    return docs


def _mo_messages(path: Path) -> list[str]:
    """The translated strings of a gettext catalog (.mo: GNU gettext's binary format), plural forms
    apart, in the catalog's own charset; [] for a file that is not a readable catalog."""
    import codecs
    import struct

    raw = path.read_bytes()
    if len(raw) < 28:
        return []
    order = {b"\xde\x12\x04\x95": "<", b"\x95\x04\x12\xde": ">"}.get(raw[:4])
    if order is None:
        return []
    n, ids_at, strs_at = struct.unpack(order + "3I", raw[8:20])
    entries = []
    for i in range(n):
        try:
            (nlen, noff), (slen, soff) = (struct.unpack_from(order + "2I", raw, ids_at + 8 * i),
                                          struct.unpack_from(order + "2I", raw, strs_at + 8 * i))
        except struct.error:
            return []
        entries.append((raw[noff:noff + nlen], raw[soff:soff + slen]))
    header = next((v for k, v in entries if not k), b"").decode("ascii", errors="replace")
    charset = (re.search(r"charset=([\w.-]+)", header) or [None, "utf-8"])[1]
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return [m for k, v in entries if k for m in v.decode(charset, errors="replace").split("\0") if m.strip()]


def _translations() -> list[tuple[str, list[str]]]:
    """One document per (language, catalog): the translated messages of every gettext catalog
    under LOCALE_DIR, joined into paragraphs, but for the languages of TRANSLATIONS_LEFT_OUT."""
    paths = [p for p in LOCALE_DIR.glob("*/LC_MESSAGES/*.mo")
             if re.split(r"[_@.]", p.parts[-3])[0] not in TRANSLATIONS_LEFT_OUT]
    docs = []
    for p in sorted(paths, key=lambda p: hashlib.sha1(f"{p.parts[-3]}/{p.name}".encode()).digest())[:CATALOGS]:
        lang = p.parts[-3]
        texts = _paragraphs("\n\n".join(_mo_messages(p)))
        if texts:
            docs.append((f"{lang}/{p.name}", texts))
    if not docs:
        raise FlashHeadError(f"no message catalogs under {LOCALE_DIR}")
    return docs


def faq_questions() -> list[str]:
    """The questions of the Debian FAQ (its numbered headings that end in '?')."""
    path = Path("/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz")
    if not path.is_file():
        raise FlashHeadError(f"no text at {path}: install Debian's debian-faq (apt-get install debian-faq)")
    text = gzip.open(path).read().decode("utf-8", errors="replace")
    qs = [" ".join(m.split()) for m in re.findall(r"^ *\d+\.\d+\.\s+(.+?\?)\s*$", text, flags=re.M)]
    return sorted(set(q.replace("`", "'") for q in qs))


def documents(domain: str) -> list[tuple[str, list[str]]]:
    """[(document name, its texts)] of a text domain (not `chat`: see chat.py). A text found in
    several documents (licence boilerplate, shared headers) stays with the first only, so no
    text lies on both sides of the split."""
    seen, out = set(), []
    for name, texts in _documents(domain):
        texts = [t for t in texts if not (t in seen or seen.add(t))]
        if texts:
            out.append((name, texts))
    return out


def _documents(domain: str) -> list[tuple[str, list[str]]]:
    if domain == "prose":
        return _fortunes(FORTUNES_DIR, FILES, PACKAGES["prose"])
    if domain in FORTUNE_FOLDERS:
        return _fortunes(FORTUNES_DIR / FORTUNE_FOLDERS[domain], None, PACKAGES[domain])
    if domain == "chinese":
        if not (FORTUNES_DIR / CHINESE[0]).is_file():
            raise FlashHeadError(f"no text at {FORTUNES_DIR / CHINESE[0]}: install Debian's fortunes-zh "
                                 "(apt-get install fortunes-zh)")
        return _fortunes(FORTUNES_DIR, CHINESE, PACKAGES[domain])
    if domain == "docs":
        return _docs()
    if domain == "code":
        return _code()
    if domain == "legal":
        return _legal()
    if domain == "translations":
        return _translations()
    raise FlashHeadError(f"unknown text domain {domain!r}: choose one of {', '.join(DOMAINS + OPTIONAL)}")


def load(split: str = "eval", domain: str = "prose") -> list[str]:
    """Texts of one split of a text domain, in a stable order that mixes its documents (a hash of
    each text), so that the first N positions sample the whole split."""
    texts = [t for name, ts in documents(domain) if _in_split(name, split) for t in ts]
    return sorted(texts, key=lambda t: hashlib.sha1(t.encode()).digest())


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
