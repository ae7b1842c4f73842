"""A private ``redis-server`` on a free 127.0.0.1 port, for tests that change the server itself (its memory limit,
its persistence) and so cannot share the session's Redis: started in a directory of its own, nothing saved."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import redis

from tests.conftest import start_process, stop_process, wait_for
from tests.net import free_port


class RedisServer:
    """``redis-server --save "" --appendonly no`` in ``directory``; :meth:`stop` ends it (and waits)."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not on PATH")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = (directory / "redis.log").open("w")
        self.process = start_process(
            [executable, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(directory),
             "--save", "", "--appendonly", "no"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.client = redis.Redis.from_url(self.url)
        wait_for(self._answers, timeout=30, what=f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def accept_writes(self) -> None:
        """Lift the memory limit a test set (``CONFIG SET maxmemory 1`` makes Redis refuse every write)."""
        self.client.config_set("maxmemory", 0)

    def stop(self) -> None:
        self.client.close()
        stop_process(self.process, timeout=10)
        self._log.close()
