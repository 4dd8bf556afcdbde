"""The dense check's two forms side by side: kernels/q8_0.c compiled as the library compiles it
(`-march=native`: the AVX-512 VNNI form where the CPU has it) and again with AVX-512 off (the AVX2
form), run on the same real hidden states against Gemma-3-270M's Q8_0 head: the logits equal bit for
bit, and the time per position of `fh_q8_dense_argmax` at each N. Behind docs/KERNELS.md's "The
dense head in one pass".

    python experiments/dense_forms.py [gemma-3-270m] --positions 1,8,16,32
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from flashhead.backends.llamacpp import LlamaCppBackend
from flashhead.build.sources import gguf_of
from flashhead.kernels.native import FLAGS, SOURCES, _compiler
from flashhead.tools.bench import PROMPT, machine


def compile_form(extra: list[str], out: Path) -> ctypes.CDLL:
    subprocess.run([_compiler(), *FLAGS, *extra, *map(str, SOURCES), "-o", str(out)], check=True)
    lib = ctypes.CDLL(str(out))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.fh_q8_dense.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ctypes.c_int32]
    lib.fh_q8_dense_argmax.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ctypes.c_int32]
    return lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="gemma-3-270m")
    ap.add_argument("--positions", default="1,2,4,8,14,16,32,64")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    b = LlamaCppBackend(gguf_of(None, args.model), n_ctx=512, max_sequences=1)
    w = b.head_weight()
    H = b.hidden_states(b.tokenize(PROMPT + " looked out over the water. The sea was calm that night, and the "
                                   "light turned slowly over the rocks where a ship had gone down."))
    H = torch.cat([H, H.flip(0), H, H.flip(0)]).float()          # enough states for N = 64
    blocks, (V, d) = w.file_blocks, w.shape
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        forms = {"native": compile_form([], Path(tmp) / "native.so"),
                 "avx2": compile_form(["-mno-avx512f"], Path(tmp) / "avx2.so")}
        for n in (int(x) for x in args.positions.split(",")):
            h = H[:n].contiguous()
            row, logits = {"positions": n}, {}
            for name, lib in forms.items():
                z = torch.empty(n, V)
                lib.fh_q8_dense(blocks.data_ptr(), blocks.shape[1], V, h.data_ptr(), n, d, z.data_ptr(), b.threads)
                logits[name] = z
                best, value = torch.empty(n, dtype=torch.int64), torch.empty(n)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    lib.fh_q8_dense_argmax(blocks.data_ptr(), blocks.shape[1], V, h.data_ptr(), n, d,
                                           best.data_ptr(), value.data_ptr(), b.threads)
                    times.append(time.perf_counter() - t0)
                assert torch.equal(best, z.argmax(1))
                row[f"{name}_ms_per_position"] = 1e3 * statistics.median(times) / n
            row["bit_for_bit"] = torch.equal(logits["native"], logits["avx2"])
            rows.append(row)
            print(row, flush=True)
    b.close()
    print(json.dumps({"machine": machine(), "threads": b.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
