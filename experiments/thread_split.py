"""Why `flashhead serve`'s decode thread makes the model itself (docs/SERVE.md, "Speed and load"):
the same greedy `generate` of 128 tokens, fast mode, llama.cpp backend, stepped from the thread that
loaded the model and then from another thread, with the body's and the head's time of each.

    python experiments/thread_split.py DIR [--threads 2]               # DIR: a Gemma-3-270M build
    OMP_WAIT_POLICY=ACTIVE python experiments/thread_split.py DIR      # idle OpenMP teams keep spinning
"""
from __future__ import annotations

import argparse
import threading
import time

import flashhead

PROMPT = "The old lighthouse keeper climbed the stairs every evening and"


def run(model, where: str) -> None:
    model.generate([PROMPT], max_new_tokens=8)
    t = time.perf_counter()
    r = model.generate([PROMPT], max_new_tokens=128, ignore_end=True)
    dt = time.perf_counter() - t
    print(f"{where}: {128 / dt:.1f} tok/s, body {r['body_seconds']:.3f} s, head {r['head_seconds']:.3f} s",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--gguf", default="gemma-3-270m")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    model = flashhead.load(a.dir, "llamacpp", gguf=a.gguf, max_sequences=8, n_ctx=2048, threads=a.threads)
    run(model, "the loading thread")
    other = threading.Thread(target=run, args=(model, "another thread"))
    other.start()
    other.join()
    model.close()


if __name__ == "__main__":
    main()
