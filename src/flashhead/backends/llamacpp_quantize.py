"""llama.cpp's own quantizations of a GGUF model, made by llama.cpp's quantizer
(`llama_model_quantize` through llama-cpp-python): the loss llama.cpp users already accept, put
beside FlashHead's in the same units (`flashhead eval DIR --backend llamacpp --quantizations q8_0,
q4_k_m`; docs/FIDELITY.md, "Beside llama.cpp's quantizations").

The source is the GGUF file the backend runs (requantized: a packaged model here ships quantized
weights only), the files are kept in the cache (cache.py) and made once.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..core.cache import cache_root
from ..core.config import FlashHeadError
from .llamacpp import _quiet, llama_cpp

# the names users know (llama-quantize's), to llama.cpp's file types
KINDS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
         "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
         "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M"}


def parse(text: str) -> list[str]:
    """'q8_0,Q4_K_M' -> ['q8_0', 'q4_k_m'], each a known kind, else one clear error."""
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise FlashHeadError(f"unknown quantization {', '.join(bad) or repr(text)}: expected a comma-separated "
                             f"list of {', '.join(KINDS)}")
    return kinds


def quantize(source: Path, kind: str, threads: int | None = None) -> Path:
    """`source` quantized to `kind` by llama.cpp (a cached file; made once, ~seconds for a small
    model). The cache key holds the source's name, size and modification time."""
    L = llama_cpp()
    _quiet(L)
    source = Path(source)
    if kind not in KINDS:
        raise FlashHeadError(f"unknown quantization {kind!r}: expected one of {', '.join(KINDS)}")
    st = source.stat()
    out = cache_root() / "gguf" / "quantized" / f"{source.stem}-{st.st_size}-{int(st.st_mtime)}.{kind}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f"{out.name}.{os.getpid()}.part")
    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, KINDS[kind])
    params.allow_requantize = True        # the packaged models' weights are quantized already
    params.nthread = threads or (os.cpu_count() or 1)
    print(f"quantizing {source.name} to {kind.upper()} with llama.cpp's quantizer", flush=True)
    rc = L.llama_model_quantize(str(source).encode(), str(part).encode(), params)
    if rc != 0 or not part.is_file():
        part.unlink(missing_ok=True)
        raise FlashHeadError(f"llama.cpp could not quantize {source.name} to {kind.upper()} (code {rc})")
    part.replace(out)
    return out
