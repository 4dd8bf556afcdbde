"""The domain suite (corpus.py): real text from packages, split by document, never by sentence."""
import pytest

from flashhead.data import corpus
from flashhead.core.config import FlashHeadError


@pytest.mark.parametrize("domain", [d for d in corpus.DOMAINS if d != "chat"])
def test_domains_split_by_document_without_overlap(domain):
    docs = corpus.documents(domain)
    ev, cal = corpus.load("eval", domain), corpus.load("calibration", domain)
    # enough text for 3,072 evaluation positions and a calibration share in every domain
    assert len(ev) >= 30 and len(cal) >= 30 and sum(map(len, ev)) > 40_000
    assert not set(ev) & set(cal)
    # every text of a document lies on one side: the split is by document
    side = {t: "eval" for t in ev} | {t: "calibration" for t in cal}
    for name, texts in docs[:: max(1, len(docs) // 200)]:
        assert len({side[t] for t in texts if t in side}) <= 1, name
    assert corpus.load("eval", domain) == ev                       # stable


def test_code_keeps_its_lines_and_russian_is_cyrillic():
    code = corpus.load("eval", "code")
    assert sum("\n    " in t for t in code) > len(code) // 4          # indentation kept
    ru = "".join(corpus.load("eval", "russian")[:50])
    assert sum("\u0400" <= c <= "\u04ff" for c in ru) > len(ru) // 2


def test_prose_split_is_the_historical_fortunes_split():
    # the eval half of `prose` is what earlier releases called the eval split of fortunes
    import hashlib
    assert all(hashlib.sha1(t.encode()).digest()[0] % 2 == 0 for t in corpus.load("eval", "prose"))


def test_faq_questions_and_bad_names():
    qs = corpus.faq_questions()
    assert len(qs) >= 50 and all(q.endswith("?") for q in qs)
    with pytest.raises(FlashHeadError, match="unknown text domain"):
        corpus.documents("klingon")
    with pytest.raises(FlashHeadError, match="split must be one of"):
        corpus.load("train", "prose")


@pytest.mark.parametrize("domain", corpus.LANGUAGES)
def test_breadth_languages_load_clean_and_split_by_document(domain):
    """The calibration-breadth languages (not in the suite): text in the language's script, no
    terminal colour codes (fortunes-zh has them), fortunes-pl read from its files (its .u8 copies are
    empty), split by document like the suite."""
    ev, cal = corpus.load("eval", domain), corpus.load("calibration", domain)
    assert len(cal) >= 100 and sum(map(len, cal)) > 15_000 and not set(ev) & set(cal)
    text = "".join(cal[:200])
    assert "\x1b" not in text
    script = {"chinese": ("\u4e00", "\u9fff"), "bulgarian": ("\u0400", "\u04ff")}.get(domain)
    if script:
        assert sum(script[0] <= c <= script[1] for c in text) > len(text) // 3
    else:   # Polish, Czech: Latin letters with their diacritics
        assert sum(c in "ąęłńóśźżčďěňřšťůž" for c in text.lower()) > len(text) // 100


def test_translations_are_every_language_but_the_suites_and_split_by_catalog():
    """The message catalogs of the installed packages (a breadth experiment, experiments/FINDINGS.md):
    many languages and scripts, never German, Russian or English (the suite's scored languages), a
    catalog on one side of the split, read by our own .mo reader (the stdlib's fails on some)."""
    import re

    docs = corpus.documents("translations")
    langs = {re.split(r"[_@.]", name.split("/")[0])[0] for name, _ in docs}
    assert len(langs) >= 40 and not langs & set(corpus.TRANSLATIONS_LEFT_OUT), sorted(langs)
    assert len(docs) <= corpus.CATALOGS
    ev, cal = corpus.load("eval", "translations"), corpus.load("calibration", "translations")
    assert len(cal) >= 1000 and not set(ev) & set(cal)
    side = {t: "eval" for t in ev} | {t: "calibration" for t in cal}
    for name, texts in docs:
        assert len({side[t] for t in texts if t in side}) <= 1, name
    text = "".join(cal[:500])
    assert text.count("\ufffd") < len(text) // 1000                   # each catalog's charset decoded
    assert sum("\u0400" <= c <= "\u04ff" for c in text) > 0 and sum(c in "åäöéèçñ" for c in text) > 0


def test_optional_sources_are_named_not_defaulted():
    """`--calibrate-on suite translations` adds the catalogs; `suite` alone never has them."""
    from flashhead.build import DEFAULT_CALIBRATION, calibration_sources

    assert not set(calibration_sources(DEFAULT_CALIBRATION)) & set(corpus.OPTIONAL)
    assert calibration_sources(["suite", "translations"])[-1] == "translations"
    with pytest.raises(FlashHeadError, match="translations"):      # the error lists what exists
        calibration_sources(["translation"])


def test_languages_check_is_running_prose_in_its_own_scripts():
    """The languages check (languages.py): every language has running text, in its script, with
    the paragraphs left in English dropped; none is a default calibration source."""
    import re

    from flashhead.data import corpus, languages

    scripts = {"el": r"[\u0370-\u03ff]", "ja": r"[\u3040-\u30ff]", "ko": r"[\uac00-\ud7af]",
               "zh_CN": r"[\u4e00-\u9fff]", "bg": r"[\u0400-\u04ff]"}
    for lang in languages.LANGUAGES:
        texts = languages.texts(lang)
        assert len(texts) >= 50, lang
        text = " ".join(texts)
        if lang in scripts:
            assert len(re.findall(scripts[lang], text)) > 0.3 * len(text.replace(" ", "")), lang
        english = sum(len(re.findall(r"\b(the|and|you|with)\b", t)) >= 4 for t in texts)
        assert english <= 0.02 * len(texts), (lang, english)
    assert not set(languages.LANGUAGES) & set(corpus.DOMAINS)
    assert languages.texts("vi")[0] == languages.texts("vi")[0]      # a stable order
