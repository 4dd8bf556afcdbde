"""`flashhead serve`: an OpenAI-compatible HTTP server over a FlashHead model directory.

    worker.py    the decode thread: continuous batching over tools/engine.py
    protocol.py  the API's requests and error body (pydantic)
    app.py       the routes (FastAPI), streaming as server-sent events

`serve(model, ...)` runs it with uvicorn until interrupted; `create_app` gives the ASGI app.
"""
from __future__ import annotations

from ..core.config import FlashHeadError
from .worker import Worker


def serve(model, host: str = "127.0.0.1", port: int = 8000, model_name: str = "flashhead",
          max_queue: int = 64, exact: bool = False, audit: int = 0, log_level: str = "info") -> None:
    """Serve `model` (tools.model.Model) on host:port until interrupted."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise FlashHeadError("flashhead serve needs fastapi and uvicorn: pip install 'flashhead[serve]'") from None
    from .app import create_app

    app = create_app(Worker(model, max_queue=max_queue, exact=exact, audit=audit), model_name)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
