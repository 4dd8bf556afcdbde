"""`flashhead serve`: an OpenAI-compatible HTTP server over a FlashHead model directory.

    worker.py    the decode thread: continuous batching over tools/engine.py
    protocol.py  the API's requests and error body (pydantic)
    app.py       the routes (FastAPI), streaming as server-sent events

`serve(worker, ...)` runs it with uvicorn until interrupted (`Worker(load)`: the decode thread makes
the model with `load()`); `create_app` gives the ASGI app.
"""
from __future__ import annotations

from ..core.config import FlashHeadError
from .worker import Worker


def serve(worker: Worker, host: str = "127.0.0.1", port: int = 8000, model_name: str = "flashhead",
          log_level: str = "info") -> None:
    """Serve the worker's model on host:port until interrupted; the model is closed at the end."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        worker.stop()
        raise FlashHeadError("flashhead serve needs fastapi and uvicorn: pip install 'flashhead[serve]'") from None
    from .app import create_app

    try:
        uvicorn.run(create_app(worker, model_name), host=host, port=port, log_level=log_level,
                    timeout_graceful_shutdown=5)
    finally:
        worker.stop()          # (a second stop after the app's own is a no-op)
