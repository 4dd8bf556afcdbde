"""A server as a subprocess on a free port, ready when it answers `GET /v1/models`: how the tests and
benchmarks/serve.py start `flashhead serve` (and llama-cpp-python's server beside it).

    with Launched([sys.executable, "-m", "flashhead.cli.main", "serve", DIR, "--port", "PORT"], log) as s:
        httpx.get(s.url + "/v1/models")

"PORT" in the command is replaced by the port chosen.
"""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from ..core.config import FlashHeadError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launched:
    def __init__(self, cmd: list[str], log: Path, timeout: float = 600):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path, self.log = Path(log), open(log, "w")
        self.proc = subprocess.Popen([c.replace("PORT", str(self.port)) for c in cmd], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                self.log.close()
                raise FlashHeadError(f"the server exited ({self.proc.returncode}): "
                                     f"{self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.close()
                raise FlashHeadError(f"the server did not answer in {timeout:.0f} s (log: {self.log_path})")
            time.sleep(0.5)

    def rss(self) -> int:
        """The server process's resident set, bytes (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
