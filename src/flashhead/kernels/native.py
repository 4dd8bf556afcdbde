"""The native helpers in q8_0.c: compiled once per machine with the system C compiler, loaded by ctypes.

Compiled on first use (about a second) into the cache (`$FLASHHEAD_CACHE/native/`, keyed by the
source's hash and the machine), with `-O3 -march=native -fopenmp`, so the int8 loops use the CPU's
vector units. No compiler is one clear error naming what to install; nothing falls back silently.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..config import FlashHeadError

SOURCE = Path(__file__).with_name("q8_0.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-lm"]
_lib = None


def _compiler() -> str:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    raise FlashHeadError("the GGUF Q8_0 head kernel needs a C compiler (install gcc, or set CC)")


def library() -> ctypes.CDLL:
    """The compiled q8_0.c (built once, then loaded from the cache)."""
    global _lib
    if _lib is not None:
        return _lib
    from ..cache import cache_root

    cc = _compiler()
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *FLAGS, platform.machine(),
                                                         platform.node()]).encode()).hexdigest()[:16]
    path = cache_root() / "native" / f"q8_0-{key}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        res = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            os.unlink(tmp)
            raise FlashHeadError(f"compiling {SOURCE.name} failed ({cc}): {res.stderr.strip()[-500:]}")
        os.replace(tmp, path)   # atomic: concurrent first uses do not see a half-written file
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.fh_q8_dot.argtypes = [ptr, i64, ptr, i64, ptr, i64, i64, ptr, ctypes.c_int32]
    lib.fh_q8_dot.restype = None
    lib.fh_q8_rows.argtypes = [ptr, i64, ptr, i64, i64, ptr]
    lib.fh_q8_rows.restype = None
    lib.fh_i8_scores.argtypes = [ptr, ptr, i64, ptr, i64, i64, ptr, ctypes.c_int32]
    lib.fh_i8_scores.restype = None
    lib.fh_q8_step.argtypes = [ptr, ptr, i64, i64, ptr, i64, i64, ptr, ptr, i64, ptr, i64, i64,
                               ptr, ptr, ptr, ptr, ptr, ctypes.c_int32, ptr, ptr, ptr]
    lib.fh_q8_step.restype = None
    _lib = lib
    return lib


def i8_scores(q, scale, h, threads: int):
    """Stage-1 scores [N, K] fp32 from int8 centroids q [K, d] and per-row scales [K] (quant.py),
    h quantized to int8 blocks of 32 as llama.cpp quantizes activations (q8_0.c fh_i8_scores)."""
    import torch

    h = h.float().contiguous()
    out = torch.empty(h.shape[0], q.shape[0])
    library().fh_i8_scores(q.data_ptr(), scale.data_ptr(), q.shape[0], h.data_ptr(), h.shape[0],
                           h.shape[1], out.data_ptr(), threads)
    return out
