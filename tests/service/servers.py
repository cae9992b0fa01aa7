"""Servers for the service tests: uvicorn in a thread (shares the session's model) or `facesearch serve` in a process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from facesearch.service import create_app
from facesearch.service.service import FaceService


def client(url: str, key: str | None = None, timeout: float = 60.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, timeout=timeout, headers=headers, trust_env=False)  # no proxy for loopback


class ThreadServer:
    """A real uvicorn on 127.0.0.1 (a free port) in a background thread; `client` talks to it."""

    def __init__(self, config, embedder=None):
        self.config = config
        self.embedder = embedder

    def __enter__(self) -> ThreadServer:
        self.service = FaceService.start(self.config, embedder=self.embedder)
        app = create_app(self.config, service=self.service)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False,
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = client(self.url, self.config.api_keys[0] if self.config.api_keys else None)
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        self.service.close()


class ProcessServer:
    """`facesearch serve ARGS --port 0` in a child process; the URL is read from its log."""

    def __init__(self, *args: str, log: Path, env: dict | None = None):
        exe = shutil.which("facesearch", path=os.path.dirname(sys.executable))
        assert exe, "the facesearch console script is not installed next to this Python"
        self.log = log
        self._file = open(log, "wb")
        self.process = subprocess.Popen([exe, "serve", *map(str, args), "--port", "0"], stdout=self._file,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=os.environ | (env or {}))
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", self.text()):
                return m.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"facesearch serve exited with {self.process.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise RuntimeError(f"facesearch serve did not start in {timeout} s:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._file.close()

    def __enter__(self) -> ProcessServer:
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()
