"""`flashhead serve` under load: the same server with FlashHead, verified (exact) and the dense head,
and llama-cpp-python's own server (`python -m llama_cpp.server`, dense, the same GGUF and threads),
each started here in turn and driven over HTTP with the same requests; then the load test and the
memory test on the FlashHead server.

    pip install 'llama-cpp-python[server]'          # the reference server (benchmarks only)
    python benchmarks/serve.py gemma-3-270m --json docs/bench/serve-gemma-3-270m.json
    python benchmarks/serve.py --render docs/bench/serve-gemma-3-270m.json --into docs/SERVE.md

Throughput: output tokens per second of wall time (every request's completion tokens over the
wall time of the whole batch of requests), greedy, `--max-tokens` per request, at concurrency 1
(requests one after another) and `--concurrency` (that many clients at once, each sending requests
in turn). Load: 64 clients at once (mixed streaming and not, 8 leaving mid-stream, 4 bad
requests, 2 prompts over the context): every good request answered, the bad ones 400, nothing left
in /metrics; time to first token and the gaps between streamed chunks, p50 / p95. Memory: the
server's resident set before and after `--sequential` requests one after another.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from flashhead.tools.bench import PROMPT
from flashhead.serve.launch import Launched
from flashhead.build.sources import gguf_of

PROMPTS = [PROMPT, "The history of the city begins", "In the morning the market was",
           "Write a short story about a robot:", "The three rules of the house were",
           "She opened the letter and read", "Once upon a time, in a village by the sea,",
           "The report describes how the team"]


class Server(Launched):
    def __init__(self, name: str, cmd: list[str], log: Path):
        self.name = name
        super().__init__(cmd, log)

    def metrics(self) -> dict | None:
        r = httpx.get(self.url + "/metrics", params={"format": "json"}, timeout=10)
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else None


def complete(url: str, prompt: str, max_tokens: int, extra: dict | None = None) -> int:
    r = httpx.post(url + "/v1/completions", timeout=600,
                   json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **(extra or {})})
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def throughput(url: str, clients: int, requests: int, max_tokens: int, extra: dict | None = None) -> dict:
    """`requests` greedy completions from `clients` clients at once -> output tok/s."""
    todo = list(range(requests))
    lock, tokens = threading.Lock(), []

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            tokens.append(complete(url, PROMPTS[i % len(PROMPTS)], max_tokens, extra))

    complete(url, PROMPTS[0], 8, extra)                               # warm up
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": requests, "output_tokens": sum(tokens), "seconds": wall,
            "output_tokens_per_second": sum(tokens) / wall}


def load_test(server: Server, n_ctx: int, max_tokens: int) -> dict:
    """64 clients at once: 50 good (half streaming), 8 leaving mid-stream, 4 bad, 2 over-length."""
    kinds = ["good"] * 50 + ["leave"] * 8 + ["bad"] * 4 + ["long"] * 2
    random.Random(0).shuffle(kinds)
    out = [None] * len(kinds)
    ttft, gaps = [], []
    bad = [{"prompt": "x", "temperature": -1}, {"prompt": "x", "n": 1000}, "{not json",
           {"prompt": "x", "max_tokens": 0}]

    def client(i: int):
        kind, url = kinds[i], server.url
        if kind in ("bad", "long"):
            body = bad[i % 4] if kind == "bad" else {"prompt": "word " * (n_ctx + 16), "max_tokens": 4}
            r = httpx.post(url + "/v1/completions", content=body if isinstance(body, str) else json.dumps(body),
                           headers={"Content-Type": "application/json"}, timeout=600)
            out[i] = (kind, r.status_code)
            return
        stream = kind == "leave" or i % 2 == 0
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.7, "seed": i,
                "stream": stream}
        t0 = time.perf_counter()
        if not stream:
            r = httpx.post(url + "/v1/completions", json=body, timeout=600)
            out[i] = (kind, r.status_code)
            return
        last, first, chunks = None, None, 0
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                elif last is not None:
                    gaps.append(now - last)
                last, chunks = now, chunks + 1
                if kind == "leave" and chunks >= 3:
                    break
        if first is not None:
            ttft.append(first)
        out[i] = (kind, r.status_code)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(kinds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    deadline = time.time() + 60
    while True:
        m = server.metrics()
        if (m["sequences_live"] == 0 and m["requests_running"] == 0 and m["requests_waiting"] == 0) \
                or time.time() > deadline:
            break
        time.sleep(0.2)
    good = [c for k, c in out if k in ("good", "leave")]
    refused = [c for k, c in out if k in ("bad", "long")]

    def pct(x, q):
        return statistics.quantiles(x, n=100)[q - 1] if len(x) > 1 else (x[0] if x else None)

    return {"clients": len(kinds), "seconds": wall, "good_answered": sum(c == 200 for c in good),
            "good": len(good), "bad_400": sum(c == 400 for c in refused), "bad": len(refused),
            "left_behind_sequences": m["sequences_live"], "sequences_free": m["sequences_free"],
            "cancelled": m["cancelled"], "largest_batch": m["largest_batch"],
            "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95),
            "itl_p50_s": pct(gaps, 50), "itl_p95_s": pct(gaps, 95)}


def memory_test(server: Server, n: int) -> dict:
    complete(server.url, PROMPTS[0], 8)
    before = server.rss()
    for i in range(n):
        complete(server.url, PROMPTS[i % len(PROMPTS)] + f" ({i})", 8)
        if i == n // 10:
            before = server.rss()                 # after the allocator's first working set
    after = server.rss()
    return {"requests": n, "rss_before_bytes": before, "rss_after_bytes": after,
            "rss_growth": (after - before) / before}


MARK = ("<!-- serve table: start -->", "<!-- serve table: end -->")


def render(report: dict) -> str:
    """Markdown: throughput per server and concurrency, the load test and the memory test."""
    c = report["concurrency"]
    names = {"flashhead": "flashhead serve, FlashHead", "flashhead_exact": "flashhead serve, exact (verified)",
             "flashhead_dense": "flashhead serve, dense head", "llama_cpp_server": "llama_cpp.server (dense)"}
    dense = report["servers"]["flashhead_dense"]
    ref = report["servers"]["llama_cpp_server"]
    lines = [f"{report['model']}, {report['cpu']}, {report['threads']} threads, {report['max_tokens']} tokens "
             f"per request, greedy (`python benchmarks/serve.py {report['model']}`):", "",
             "| server | tok/s, 1 client | vs dense | vs llama_cpp.server | "
             f"tok/s, {c} clients | vs dense | vs llama_cpp.server |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, name in names.items():
        r = report["servers"][key]
        cells = []
        for k in ("concurrency_1", f"concurrency_{c}"):
            t = r[k]["output_tokens_per_second"]
            cells += [f"{t:.1f}", f"{t / dense[k]['output_tokens_per_second']:.2f}x",
                      f"{t / ref[k]['output_tokens_per_second']:.2f}x"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ld, mem = report["load"], report["memory"]
    lines += ["", f"Load: {ld['clients']} clients at once on the FlashHead server ({c} sequences decoded "
              f"together, the rest queued): {ld['good_answered']} of {ld['good']} good requests answered "
              f"(8 of them left mid-stream), {ld['bad_400']} of {ld['bad']} bad or over-length requests "
              f"refused with 400, {ld['left_behind_sequences']} sequences left behind, largest batch "
              f"{ld['largest_batch']}; time to first token p50 {ld['ttft_p50_s']:.2f} s, p95 "
              f"{ld['ttft_p95_s']:.2f} s (queueing included); between streamed chunks p50 "
              f"{1e3 * ld['itl_p50_s']:.1f} ms, p95 {1e3 * ld['itl_p95_s']:.1f} ms. Memory: resident set "
              f"{mem['rss_before_bytes'] / 2**20:.0f} MiB → {mem['rss_after_bytes'] / 2**20:.0f} MiB over "
              f"{mem['requests']} requests one after another ({100 * mem['rss_growth']:+.2f}%)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="a model alias (gemma-3-270m, smollm2-135m)")
    ap.add_argument("--render", default=None, metavar="JSON", help="print the markdown of a saved run instead")
    ap.add_argument("--into", default=None, metavar="MD", help="with --render: replace the table between "
                    "the serve-table markers of this file")
    ap.add_argument("--dir", default=None, help="its FlashHead directory (default: the benchmarks' build)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16, help="requests per throughput run at --concurrency")
    ap.add_argument("--sequential", type=int, default=1000, help="requests in the memory test")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.render:
        table = render(json.loads(Path(args.render).read_text()))
        if args.into:
            doc = Path(args.into).read_text()
            head, rest = doc.split(MARK[0])
            _, tail = rest.split(MARK[1])
            Path(args.into).write_text(f"{head}{MARK[0]}\n{table}\n{MARK[1]}{tail}")
        else:
            print(table)
        return
    if not args.model:
        ap.error("give a model (or --render JSON)")
    work = Path(os.environ.get("FLASHHEAD_BENCH_DIR", Path.home() / ".cache/flashhead/bench-models"))
    model_dir = Path(args.dir or work / f"{args.model}-flashhead")
    gguf = gguf_of(None, args.model)
    logs = work / "serve-logs"                    # the servers' own logs, beside the builds
    logs.mkdir(parents=True, exist_ok=True)
    common = ["--backend", "llamacpp", "--gguf", str(gguf), "--threads", str(args.threads), "--port", "PORT",
              "--n-ctx", str(args.n_ctx), "--max-sequences", str(args.concurrency), "--log-level", "warning"]
    flash = [sys.executable, "-m", "flashhead.cli.main", "serve", str(model_dir), *common]
    servers = {
        "flashhead": flash,
        "flashhead_exact": [*flash, "--exact"],
        "flashhead_dense": [*flash, "--dense"],
        # llama-cpp-python's server: one request at a time (it has no batching), its own n_ctx
        "llama_cpp_server": [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", "PORT",
                             "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                             "--n_ctx", str(args.n_ctx)],
    }
    rows, report = {}, {}
    for name, cmd in servers.items():
        print(f"{name}: starting", file=sys.stderr, flush=True)
        s = Server(name, cmd, logs / f"{name}.log")
        try:
            rows[name] = {"concurrency_1": throughput(s.url, 1, 4, args.max_tokens),
                          f"concurrency_{args.concurrency}": throughput(s.url, args.concurrency, args.requests,
                                                                        args.max_tokens)}
            if name == "flashhead":
                print("flashhead: load test", file=sys.stderr, flush=True)
                report["load"] = load_test(s, args.n_ctx, 64)
                print("flashhead: memory test", file=sys.stderr, flush=True)
                report["memory"] = memory_test(s, args.sequential)
        finally:
            s.close()
        print(f"{name}: {json.dumps(rows[name])}", file=sys.stderr, flush=True)
    c = f"concurrency_{args.concurrency}"

    def tps(name, key):
        return rows[name][key]["output_tokens_per_second"]

    report.update({
        "model": args.model, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cpu": _cpu_name(), "threads": args.threads, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
        "servers": rows,
        "flashhead_vs_dense_c1": tps("flashhead", "concurrency_1") / tps("flashhead_dense", "concurrency_1"),
        f"flashhead_vs_dense_c{args.concurrency}": tps("flashhead", c) / tps("flashhead_dense", c),
        "exact_vs_dense_c1": tps("flashhead_exact", "concurrency_1") / tps("flashhead_dense", "concurrency_1"),
        f"exact_vs_dense_c{args.concurrency}": tps("flashhead_exact", c) / tps("flashhead_dense", c),
        "flashhead_vs_llama_cpp_server_c1": tps("flashhead", "concurrency_1") / tps("llama_cpp_server", "concurrency_1"),
        f"flashhead_vs_llama_cpp_server_c{args.concurrency}": tps("flashhead", c) / tps("llama_cpp_server", c),
    })
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
