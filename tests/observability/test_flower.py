"""Flower (``celery -A marketplace flower``, the Procfile's role) against the test Redis: its log lines come
out once each, in our format, and its Broker tab works with the project's Redis transport."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from flower.utils.broker import Broker, Redis

from marketplace.celery import app as celery_app
from observability.messaging.redis_transport import Transport
from tests.conftest import ROOT, TEST_REDIS_URL, start_process, stop_process, wait_for
from tests.net import free_port, http_status


@pytest.fixture
def flower(redis_client: object, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Flower process on a free port; yields its port and its log file (stdout and stderr), stops it after."""
    port = free_port()
    log_path = tmp_path / "flower.log"
    env = {**os.environ, "CELERY_BROKER_URL": TEST_REDIS_URL, "CELERY_RESULT_BACKEND": TEST_REDIS_URL}
    with log_path.open("w") as log:
        process = start_process(
            [sys.executable, "-m", "celery", "-A", "marketplace", "flower", f"--port={port}", "--address=127.0.0.1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(
                lambda: process.poll() is not None or http_status(f"http://127.0.0.1:{port}/healthcheck") == 200,
                timeout=30, what="Flower to answer /healthcheck",
            )  # fmt: skip
            assert process.poll() is None, log_path.read_text()
            yield port, log_path
        finally:
            stop_process(process)


def test_every_flower_line_is_written_once_in_our_json_format(flower):
    """Tornado (Flower's server) would give the root logger a handler of its own beside ours: each line twice,
    once in tornado's format. Every line Flower writes off a terminal is one JSON object, and none repeats."""
    port, log_path = flower
    http_status(f"http://127.0.0.1:{port}/dashboard")  # a request, to log whatever a request logs
    wait_for(lambda: "Visit me at" in log_path.read_text(), what="Flower's banner line")

    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # raises on a line in another format
    events = Counter((r["logger"], r["event"]) for r in records)
    assert [event for event, count in events.items() if count > 1] == []
    assert ("flower.command", f"Visit me at http://127.0.0.1:{port}") in events


def test_the_broker_tab_lists_the_queues(flower):
    """Flower's Broker tab picks its client by the broker URL's scheme: with the project's transport the URL
    reads ``redis://`` and the tab lists the default queue, where it answered 404 "'redis' broker is not
    supported"."""
    port, _ = flower
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/broker", timeout=10) as response:
        page = response.read().decode()
    assert "not supported" not in page
    assert "<td>celery</td>" in page


def test_the_project_transport_shows_as_redis_and_stays_in_use():
    """A connection's URL names the transport ``redis`` (what Flower's Broker reads), while the connection
    itself and its clones still use the project's guarded transport."""
    with celery_app.connection() as connection:
        uri = connection.as_uri(include_password=True)
        assert uri.startswith("redis://")
        assert isinstance(Broker(uri), Redis)
        assert isinstance(connection.transport, Transport)
        with connection.clone() as clone:
            assert isinstance(clone.transport, Transport)
