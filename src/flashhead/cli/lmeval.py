"""`flashhead lm-eval ARGS...`: lm-eval's own CLI with the `flashhead` model registered."""
from __future__ import annotations

import argparse

HELP = "lm-evaluation-harness with the flashhead model registered (every argument goes to lm-eval)"
EPILOG = """examples:
  flashhead lm-eval --model flashhead --model_args pretrained=models/smollm2-flashhead --tasks hellaswag
  flashhead lm-eval run --model flashhead --model_args pretrained=DIR,probes=512 --tasks TASK \\
      --include_path my_tasks/ --output_path results/ --limit 100
  flashhead lm-eval --model flashhead --model_args pretrained=DIR,dense=True ...   # same model, dense head
  flashhead lm-eval ls tasks

Every argument is lm-eval's (same flags, same output files: `flashhead lm-eval --help` prints
lm-eval's help). model_args: pretrained=DIR (a FlashHead model directory), probes=N (default: the
directory's), dense=True (the dense head, for comparison), dtype=float32. Continuations are scored
exactly (the known token's exact logit; only the normaliser carries FlashHead's estimates).
Needs lm-eval 0.4.13 (pip install "flashhead[lmeval]").
"""


def add_arguments(p):
    p.add_argument("args", nargs=argparse.REMAINDER, help="lm-eval's arguments")


def run(args):
    import sys

    from ..core.config import FlashHeadError

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise FlashHeadError('lm-eval is not installed: pip install "flashhead[lmeval]" (lm-eval 0.4.13)') from None
    from ..integrations import lmeval  # noqa: F401  (registers the flashhead model)

    if not args.args or args.args[0] in ("-h", "--help"):
        print(f"flashhead lm-eval: {HELP}\n\n{EPILOG}\nlm-eval's own help follows.\n")
    argv = sys.argv
    sys.argv = ["flashhead lm-eval", *args.args]   # lm-eval's CLI reads sys.argv
    try:
        cli_evaluate()
    except SystemExit as e:                       # argparse's --help / errors: lm-eval's exit code
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
