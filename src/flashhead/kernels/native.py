"""The native helpers in q8_0.c (GGUF Q8_0 rows, int8 stage 1 as llama.cpp multiplies), rows.c
(stage 2 on bf16 or fp32 rows, read in place) and i8_stage1.c (int8 stage 1 with torch's arithmetic, in one pass):
compiled once per machine with the system C compiler into one library, loaded by ctypes.

Compiled on first use (about a second) into the cache (`$FLASHHEAD_CACHE/native/`, keyed by the
sources' hash and the machine), with `-O3 -march=native -fopenmp`, so the loops use the CPU's
vector units (`build`: the same for a backend's own C file). No compiler is one clear error naming
what to install; where the CPU kernel can do without (`available`), it says so once and runs
torch's ops.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..core.config import FlashHeadError
from ..core.cache import cache_root

SOURCES = [Path(__file__).with_name(n) for n in ("q8_0.c", "rows.c", "i8_stage1.c")]
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-lm"]
_lib = None
# the row dtypes rows.c reads (rows_dot); the CPU kernel runs torch's ops for others (fp16)
ROW_DTYPES = (torch.bfloat16, torch.float32)


def _compiler() -> str:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    raise FlashHeadError("flashhead's native CPU kernels (GGUF Q8_0 rows, bf16 rows) need a C compiler "
                         "(install gcc, or set CC)")


def build(sources: list[Path], name: str = "flashhead") -> ctypes.CDLL:
    """C sources compiled into one library (once per machine: the cache, keyed by the sources'
    hash, the compiler and the machine), then loaded. The kernels' library is `library()`; a
    backend may build its own small one the same way (backends/llamacpp.py's eval callback)."""
    cc = _compiler()
    key = hashlib.sha256(b"".join(s.read_bytes() for s in sources) + " ".join([cc, *FLAGS, platform.machine(),
                                                         platform.node()]).encode()).hexdigest()[:16]
    path = cache_root() / "native" / f"{name}-{key}.so"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        res = subprocess.run([cc, *FLAGS, *map(str, sources), "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            os.unlink(tmp)
            raise FlashHeadError(f"compiling {', '.join(s.name for s in sources)} failed ({cc}): "
                                 f"{res.stderr.strip()[-500:]}")
        os.replace(tmp, path)   # atomic: concurrent first uses do not see a half-written file
    return ctypes.CDLL(str(path))


def library() -> ctypes.CDLL:
    """The kernels' sources (built once, then loaded from the cache)."""
    global _lib
    if _lib is not None:
        return _lib
    lib = build(SOURCES)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.fh_q8_dot.argtypes = [ptr, i64, ptr, i64, ptr, i64, i64, ptr, ctypes.c_int32]
    lib.fh_q8_dot.restype = None
    lib.fh_q8_rows.argtypes = [ptr, i64, ptr, i64, i64, ptr]
    lib.fh_q8_dense.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ctypes.c_int32]
    lib.fh_q8_dense.restype = None
    lib.fh_q8_dense_argmax.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ctypes.c_int32]
    lib.fh_q8_dense_argmax.restype = None
    lib.fh_q8_rows.restype = None
    lib.fh_i8_scores.argtypes = [ptr, ptr, i64, ptr, i64, i64, ptr, ctypes.c_int32]
    lib.fh_i8_scores.restype = None
    lib.fh_q8_step.argtypes = [ptr, ptr, i64, i64, ptr, i64, i64, ptr, ptr, i64, ptr, i64, i64,
                               ptr, ptr, ptr, ptr, ptr, ctypes.c_int32, ptr, ptr, ptr, ptr, i64, ptr]
    lib.fh_q8_step.restype = None
    for f in (lib.fh_bf16_dot, lib.fh_f32_dot):
        f.argtypes = [ptr, i64, ptr, i64, i64, ptr, i64, i64, ptr, ctypes.c_int32]
        f.restype = None
    lib.fh_i8_scores_bf16.argtypes = [ptr, ptr, i64, ptr, i64, i64, ptr, ctypes.c_int32]
    lib.fh_i8_scores_bf16.restype = None
    _lib = lib
    return lib


def available() -> bool:
    """Whether the native kernels are here: compiled on first use; without a C compiler the CPU
    kernel runs torch's ops instead (stage 2 copies the rows to fp32: the same logits up to the
    order of the sums, slower), said once."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            library()
            _AVAILABLE = True
        except FlashHeadError as e:
            logging.getLogger("flashhead").warning("%s; the CPU kernel runs torch's ops instead (slower, "
                                                   "and a position's logits may then differ in the last "
                                                   "bits with the size of its batch)", e)
            _AVAILABLE = False
    return _AVAILABLE


_AVAILABLE = None


@torch.compiler.disable   # a ctypes call: torch.compile would pass it pointers into a traced graph
def i8_scores(q, scale, h, threads: int):
    """Stage-1 scores [N, K] fp32 from int8 centroids q [K, d] and per-row scales [K] (quant.py),
    h quantized to int8 blocks of 32 as llama.cpp quantizes activations (q8_0.c fh_i8_scores)."""
    h = h.float().contiguous()
    out = torch.empty(h.shape[0], q.shape[0])
    library().fh_i8_scores(q.data_ptr(), scale.data_ptr(), q.shape[0], h.data_ptr(), h.shape[0],
                           h.shape[1], out.data_ptr(), threads)
    return out


@torch.compiler.disable   # a ctypes call: torch.compile would pass it pointers into a traced graph
def i8_scores_bf16(q, scale, h, threads: int, out=None):
    """Stage-1 scores [N, K] fp32 (bf16 values) from int8 centroids q [K, d] and per-row scales [K]
    bf16 (quant.py's `scale_bf16`), h rounded to bf16: torch's `_weight_int8pack_mm` arithmetic
    (i8_stage1.c)."""
    h = h.to(torch.bfloat16).float().contiguous()
    if scale.dtype != torch.bfloat16 or not scale.is_contiguous():
        raise FlashHeadError("i8_scores_bf16 takes the scales as a contiguous bf16 tensor")
    out = torch.empty(h.shape[0], q.shape[0]) if out is None else out
    library().fh_i8_scores_bf16(q.data_ptr(), scale.data_ptr(), q.shape[0], h.data_ptr(), h.shape[0],
                                h.shape[1], out.data_ptr(), threads)
    return out


@torch.compiler.disable   # a ctypes call: torch.compile would pass it pointers into a traced graph
def rows_dot(weight, ids, h, threads: int, out=None, run: int = 1):
    """Exact logits z [N, R] fp32 of head rows (weight [*, d] bf16 or fp32, unit stride along d)
    against h [N, d]: fp32 products of the rows as stored, in an order that does not depend on N
    (rows.c). run = 1: the rows `weight[ids]` (ids [R] int64); run = cs: ids [R / cs] name runs of
    cs rows, `weight[ids * cs + j]`."""
    if weight.dtype not in ROW_DTYPES or weight.stride(1) != 1:
        raise FlashHeadError(f"rows_dot takes bf16 or fp32 rows with unit stride, not {weight.dtype} "
                             f"with strides {tuple(weight.stride())}")
    h = h.float().contiguous()
    ids = ids.contiguous()
    rows = ids.numel() * run
    z = torch.empty(h.shape[0], rows) if out is None else out
    fn = library().fh_bf16_dot if weight.dtype == torch.bfloat16 else library().fh_f32_dot
    fn(weight.data_ptr(), weight.stride(0), ids.data_ptr(), rows, run, h.data_ptr(), h.shape[0], h.shape[1],
       z.data_ptr(), threads)
    return z
