"""README's commands still parse: every `flashhead ...` line of its code blocks is accepted by the
console script's own argument parser (the commands' work is tested elsewhere, on real models), and
the Python calls it shows exist with the arguments it passes."""
from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path

import pytest

from flashhead.cli.main import PASSTHROUGH, SUBCOMMANDS, _parser

README = Path(__file__).resolve().parent.parent / "README.md"


def commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0].endswith("flashhead"):
                    out.append(words[1:])
    return out


def test_readme_shows_the_commands():
    names = {c[0] for c in commands() if c}
    assert {"build", "generate", "serve", "eval", "bench", "demo"} <= names, names


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv):
    assert argv and argv[0] in SUBCOMMANDS, argv
    if argv[0] in PASSTHROUGH:
        return                                    # handed whole to the other tool's own CLI
    parser, _ = _parser()
    try:
        parser.parse_args(argv)
    except SystemExit as e:                       # argparse's way to refuse
        pytest.fail(f"README command does not parse: flashhead {' '.join(argv)} (exit {e.code})")


def test_readme_python_calls_exist():
    import flashhead
    from flashhead.tools.generate import generate      # what Model.generate hands its arguments to

    text = README.read_text()
    assert "flashhead.load(" in text and 'mode="exact"' in text
    assert callable(flashhead.load)
    params = inspect.signature(generate).parameters
    assert {"max_new_tokens", "mode"} <= set(params), list(params)
