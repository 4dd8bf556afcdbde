"""Offline lm-eval tasks on the domain suite's held-out text (corpus.py), written at run time.

    python -m flashhead.data.lmeval_tasks OUT_DIR [--docs N] [--domains prose,german,...]
    flashhead lm-eval --model flashhead --model_args pretrained=DIR --include_path OUT_DIR \\
        --tasks flashhead_ppl_prose,flashhead_lastword_prose,flashhead_choice_prose

For each text domain (not chat: its answers come from the model itself), from the first `docs`
texts of its `eval` split (documents a default build never calibrates on; corpus.py splits by
document) a JSONL file and a task YAML (lm-eval reads `dataset_path: json` with `data_files`, an
absolute path here, so nothing is fetched):

    flashhead_ppl_<d>       loglikelihood_rolling over each text: word/byte perplexity, bits per byte
    flashhead_lastword_<d>  loglikelihood of a text's last word given the rest (LAMBADA-style):
                            perplexity, acc (= every token of the word is the greedy token)
    flashhead_choice_<d>    multiple_choice: a text's first half, its own second half against the
                            second halves of three other texts of the domain: acc, acc_norm

and the group `flashhead_suite` of them all. The text is real, written by nobody on this project:
Debian packages and CPython (the sources and licences in corpus.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from . import corpus

DOMAINS = ("prose", "docs", "code", "legal", "german", "russian")
DOCS = 100
_CHOICES = 4

_HEAD = """# Written by flashhead.data.lmeval_tasks from the {domain!r} domain's eval split (held out by document
# from the default build's calibration); text from {source} (corpus.py).
"""
_PPL = """task: flashhead_ppl_{domain}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""
_LASTWORD = """task: flashhead_lastword_{domain}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
_CHOICE = """task: flashhead_choice_{domain}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
_SOURCE = {"prose": "Debian fortunes, fortunes-min (BSD)", "german": "Debian fortunes-de (GPL-2+)",
           "russian": "Debian fortunes-ru (GPL-2)", "docs": "CPython's pydoc_data.topics (PSF)",
           "code": "CPython's standard library (PSF) and /usr/include headers (LGPL-2.1+, GPL-2)",
           "legal": "Debian base-files common-licenses and /usr/share/doc/*/copyright"}


def _split_words(text: str) -> tuple[str, str]:
    words = text.split(" ")
    return " ".join(words[:len(words) // 2]), " " + " ".join(words[len(words) // 2:])


def _records(texts: list[str]) -> tuple[list, list, list]:
    ppl = [{"text": t} for t in texts]
    words = [t for t in texts if len(t.split(" ")) >= 8]
    last = [{"context": " ".join(t.split(" ")[:-1]), "target": " " + t.split(" ")[-1]} for t in words]
    halves = [_split_words(t) for t in words]
    choice = []
    for i, (first, second) in enumerate(halves):
        others = [halves[(i + k) % len(halves)][1] for k in range(1, len(halves))]
        others = [o for o in dict.fromkeys(others) if o != second][:_CHOICES - 1]
        if len(others) < _CHOICES - 1:
            continue
        gold = hashlib.sha1(first.encode()).digest()[0] % _CHOICES     # a stable, spread position
        choice.append({"context": first, "choices": others[:gold] + [second] + others[gold:], "gold": gold})
    return ppl, last, choice


def write(out_dir, domains=DOMAINS, docs: int = DOCS) -> Path:
    """Write the JSONL data and task YAMLs into out_dir (for `--include_path out_dir`)."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for d in domains:
        texts = corpus.load("eval", d)[:docs]
        for kind, rows, yaml in zip(("ppl", "lastword", "choice"), _records(texts), (_PPL, _LASTWORD, _CHOICE)):
            data = out / f"{kind}_{d}.jsonl"
            data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            (out / f"flashhead_{kind}_{d}.yaml").write_text(
                _HEAD.format(domain=d, source=_SOURCE[d]) + yaml.format(domain=d, data=json.dumps(str(data))))
            names.append(f"flashhead_{kind}_{d}")
    (out / "flashhead_suite.yaml").write_text(
        "group: flashhead_suite\ntask:\n" + "".join(f"  - {n}\n" for n in names)
        + "metadata:\n  version: 1.0\n")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m flashhead.data.lmeval_tasks", description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--docs", type=int, default=DOCS, help="texts per domain (default %(default)s)")
    p.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated (default %(default)s)")
    a = p.parse_args(argv)
    print(write(a.out_dir, a.domains.split(","), a.docs))


if __name__ == "__main__":
    main()
