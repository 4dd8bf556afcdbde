"""The `flashhead` console script: main.py dispatches to one module per subcommand."""
from __future__ import annotations


def int_list(text: str) -> list[int]:
    """argparse type for comma-separated integers, e.g. 1,4,16."""
    import argparse

    try:
        return [int(p) for p in text.split(",") if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
