"""Write a generated table into a doc between its two marker comments (benchmarks/*.py --into)."""
from __future__ import annotations

from pathlib import Path


def into(path, mark: tuple[str, str], table: str) -> None:
    """Replace what lies between `mark[0]` and `mark[1]` in the file at `path` with `table`."""
    doc = Path(path).read_text()
    head, rest = doc.split(mark[0])
    _, tail = rest.split(mark[1])
    Path(path).write_text(f"{head}{mark[0]}\n{table}\n{mark[1]}{tail}")


def emit(table: str, path=None, mark: tuple[str, str] | None = None) -> None:
    """A script's table: into the doc at `path` between `mark`'s markers, else printed."""
    if path:
        into(path, mark, table)
    else:
        print(table)
