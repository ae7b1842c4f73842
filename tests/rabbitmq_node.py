"""A private RabbitMQ node on free 127.0.0.1 ports, for tests that stop and start the broker itself (which the
machine's node, shared by every run, must never be): its own node name, data and log directory, configuration and
no plugins, started through Debian's ``rabbitmq-server`` and driven with ``rabbitmqctl -n``. Runs as the
``rabbitmq`` user where the scripts switch to it (root), so its directory is made that user's."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.conftest import wait_for
from tests.net import free_port
from tests.rabbitmq import rabbitmqctl

__all__ = ["RabbitMQNode"]


class RabbitMQNode:
    def __init__(self) -> None:
        server = shutil.which("rabbitmq-server")
        if server is None:
            raise RuntimeError("rabbitmq-server is not on PATH")
        self.name = f"marketplace-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port, dist_port = free_port(), free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        # Not under pytest's tmp_path, whose parents only root may enter: the node runs as the rabbitmq user.
        directory = Path(tempfile.mkdtemp(prefix="marketplace-rabbitmq-"))
        directory.chmod(0o755)
        (directory / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (directory / "enabled_plugins").write_text("[].\n")  # no management listener to clash with another node's
        for sub in ("mnesia", "log"):
            (directory / sub).mkdir()
        if os.geteuid() == 0:
            shutil.chown(directory, "rabbitmq", "rabbitmq")
            for path in directory.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        self.directory = directory
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"), "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"), "RABBITMQ_PID_FILE": str(directory / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        }  # fmt: skip
        subprocess.run([server, "-detached"], env=env, check=True, capture_output=True, timeout=60)
        self.wait_serving()

    def wait_serving(self) -> None:
        """Return once the node's broker application runs (``await_startup`` fails until the node registers)."""

        def started() -> bool:
            result = subprocess.run(
                ["rabbitmqctl", "-n", self.name, "-q", "await_startup", "--timeout", "10"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            return result.returncode == 0

        wait_for(started, timeout=90, interval=0.5, what=f"RabbitMQ node {self.name} to start:\n{self.log()}")

    def stop_app(self) -> None:
        """Stop the broker application (every connection closed, the node and its data kept), as a restart does."""
        rabbitmqctl("-n", self.name, "stop_app")

    def start_app(self) -> None:
        rabbitmqctl("-n", self.name, "start_app")
        self.wait_serving()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in (self.directory / "log").glob("*.log"))

    def stop(self) -> None:
        """Stop the node and wait until its Erlang VM has exited (``stop`` given the pid file waits for it)."""
        subprocess.run(
            ["rabbitmqctl", "-n", self.name, "-q", "stop", str(self.directory / "pid")], capture_output=True, timeout=60
        )
        shutil.rmtree(self.directory, ignore_errors=True)
