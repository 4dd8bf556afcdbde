"""Entry point of the `flashhead` console script.

Each subcommand lives in `flashhead/cli/<name, dashes dropped>.py` and defines:
    HELP: str                        one-line description
    add_arguments(parser) -> None    its flags (with an epilog showing a real session)
    run(args) -> int | None          the work; raise FlashHeadError for user errors
User errors (FlashHeadError, missing files) print one line `flashhead: error: ...` and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ["build", "upgrade", "generate", "serve", "demo", "eval", "bench", "lm-eval"]
# Handing every argument on to another tool's CLI (argparse's REMAINDER cannot start with a flag).
PASSTHROUGH = {"lm-eval"}


def _parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="flashhead", description="FlashHead: a fast retrieval output head for small language models.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"flashhead {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name in SUBCOMMANDS:
        mod = importlib.import_module(f"flashhead.cli.{name.replace('-', '')}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP, add_help=name not in PASSTHROUGH,
                           epilog=getattr(mod, "EPILOG", None),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        modules[name] = (mod, p)
    return parser, modules


def _quiet_frameworks() -> None:
    """Our own progress bars stay; transformers' per-load bars and warnings only add noise."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    from ..core.config import FlashHeadError

    parser, modules = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASSTHROUGH:
        args = argparse.Namespace(command=argv[0], args=argv[1:])
    else:
        args = parser.parse_args(argv)
    _quiet_frameworks()
    mod, sub_parser = modules[args.command]
    try:
        code = mod.run(args)
    except (FlashHeadError, FileNotFoundError, NotADirectoryError) as e:
        print(f"flashhead {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flashhead: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
