"""Where flashhead keeps what it makes once and reuses: `$FLASHHEAD_CACHE`, else
`$XDG_CACHE_HOME/flashhead`, else `~/.cache/flashhead` (converted GGUF models, compiled kernels,
chat answers, benchmark hidden states)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("FLASHHEAD_CACHE"):
        return Path(os.environ["FLASHHEAD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flashhead"
