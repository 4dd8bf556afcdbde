"""`flashhead serve`: an OpenAI-compatible HTTP server on a FlashHead model directory."""
from __future__ import annotations

import sys

HELP = "serve a FlashHead model directory over OpenAI's HTTP API (llama.cpp on the GGUF by default)"
EPILOG = """examples:
  flashhead serve models/gemma-3-270m-flashhead                      # http://127.0.0.1:8000/v1
  flashhead serve models/gemma-3-270m-flashhead --exact --port 8080  # verified: the dense head's tokens
  flashhead serve models/gemma-3-270m-flashhead --dense              # the same server, dense head
  flashhead serve models/gemma-3-270m-flashhead --audit 64           # + FlashHead vs dense, 1 token in 64
  flashhead serve models/smollm2-flashhead --backend transformers --max-sequences 4

  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}'

  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
  client.chat.completions.create(model="gemma-3-270m-flashhead",
                                 messages=[{"role": "user", "content": "Hi!"}], stream=True)

Per request: the OpenAI fields (temperature, top_p, seed, max_tokens, stop, n, logprobs, stream),
and `top_k` and `exact` (true: verified decoding for that request). GET /metrics (Prometheus text;
?format=json), /health, /v1/models.
"""


def add_arguments(p):
    p.add_argument("model_dir", help="a FlashHead model directory (from `flashhead build`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--backend", choices=["auto", "transformers", "llamacpp"], default="auto",
                   help="where the model's body runs (default auto: llama.cpp on the GGUF where "
                        "llama-cpp-python is installed, else transformers)")
    p.add_argument("--gguf", default=None, help="llamacpp: the GGUF file (default: the one the directory "
                   "was built from)")
    p.add_argument("--max-sequences", type=int, default=8,
                   help="sequences decoded together, each with its own cache (default %(default)s)")
    p.add_argument("--n-ctx", type=int, default=2048,
                   help="positions per sequence, prompt and output (default %(default)s; at most the "
                        "model's trained context)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a sequence before new ones get 503 (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: the cores torch uses)")
    p.add_argument("--probes", type=int, default=None, help="clusters probed per step (default: the model's)")
    p.add_argument("--context-probes", type=int, default=None,
                   help="of the probes, the most that go to the clusters of each sequence's own tokens "
                        "(default: the model's; 0: off)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exact", action="store_true", help="verified decoding by default (a request's "
                      "`exact` field overrides it)")
    mode.add_argument("--dense", action="store_true", help="serve the dense head (the baseline)")
    p.add_argument("--audit", type=int, default=0, metavar="N", help="the live audit: the dense head also "
                   "scores every N-th FlashHead token; agreement in /metrics and the log (e.g. 64)")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send (default: the directory's name)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args):
    import logging
    from pathlib import Path

    from ..core.config import FlashHeadError
    from ..serve import Worker, serve
    from ..tools.model import load

    for name in ("max_sequences", "n_ctx", "max_queue"):
        if getattr(args, name) < 1:
            raise FlashHeadError(f"need --{name.replace('_', '-')} >= 1")
    if args.audit < 0 or (args.audit and args.dense):
        raise FlashHeadError("--audit N (N >= 1) audits FlashHead: leave out --dense")
    if not 0 <= args.port < 65536:
        raise FlashHeadError("need 0 <= --port < 65536")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    worker = Worker(lambda: load(args.model_dir, args.backend, gguf=args.gguf, probes=args.probes,
                                 dense=args.dense, context_probes=args.context_probes,
                                 max_sequences=args.max_sequences, n_ctx=args.n_ctx, threads=args.threads),
                    max_queue=args.max_queue, exact=args.exact, audit=args.audit)
    model = worker.model
    name = args.served_model_name or Path(args.model_dir).resolve().name
    b = model.backend
    head = "dense head" if model.head is None else f"FlashHead (probes={model.head.probes}" \
        f"{', exact by default' if args.exact else ''})"
    print(f"flashhead serve: {name} on {b.name}, {head}, {b.max_sequences} sequences x {b.n_ctx} positions, "
          f"{b.threads} threads: http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    serve(worker, args.host, args.port, model_name=name, log_level=args.log_level)
