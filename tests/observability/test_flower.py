"""Flower (``celery -A marketplace flower``, the Procfile's role) against the test Redis: its log lines come
out once each, in our format, and its Broker tab works with the project's Redis transport. ``flowerconfig.py``
makes it listen on 127.0.0.1 and refuse to start without authentication; its worker page masks secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flower.utils.broker import Broker, Redis

from marketplace.celery import app as celery_app
from observability.logs.redaction import MASK
from observability.messaging.redis_transport import Transport
from tests.conftest import ROOT, TEST_REDIS_URL, broker_url_with_password, start_process, stop_process, wait_for
from tests.net import free_port, http_status

CREDENTIALS = "admin:flower-test-password"
AUTHORIZATION = {"Authorization": "Basic " + b64encode(CREDENTIALS.encode()).decode()}


def _flower_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "CELERY_BROKER_URL": TEST_REDIS_URL, "CELERY_RESULT_BACKEND": TEST_REDIS_URL, **extra}
    env.pop("FLOWER_ADDRESS", None)
    return env


@contextmanager
def running_flower(env: dict[str, str], log_path: Path) -> Iterator[int]:
    """``celery -A marketplace flower`` (no ``--address``: the default is flowerconfig.py's) on a free port."""
    port = free_port()
    with log_path.open("w") as log:
        process = start_process(
            [sys.executable, "-m", "celery", "-A", "marketplace", "flower", f"--port={port}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(
                lambda: process.poll() is not None or http_status(f"http://127.0.0.1:{port}/healthcheck") == 200,
                timeout=30, what="Flower to answer /healthcheck",
            )  # fmt: skip
            assert process.poll() is None, log_path.read_text()
            yield port
        finally:
            stop_process(process)


@pytest.fixture
def flower(redis_client: object, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Flower process on a free port; yields its port and its log file (stdout and stderr), stops it after."""
    log_path = tmp_path / "flower.log"
    with running_flower(_flower_env(FLOWER_BASIC_AUTH=CREDENTIALS), log_path) as port:
        yield port, log_path


def _get(url: str) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTHORIZATION), timeout=30) as response:
        return str(response.read().decode())


def _page_once_served(url: str) -> str:
    """The page, or "" while Flower answers 404: it does until the worker answers its inspect (1 s timeout),
    which a loaded machine can make it miss - polled, not a failure."""
    try:
        return _get(url)
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        return ""


def test_every_flower_line_is_written_once_in_our_json_format(flower):
    """Tornado (Flower's server) would give the root logger a handler of its own beside ours: each line twice,
    once in tornado's format. Every line Flower writes off a terminal is one JSON object, and none repeats."""
    port, log_path = flower
    http_status(f"http://127.0.0.1:{port}/dashboard")  # a request (refused: no credentials), to log what it logs
    wait_for(lambda: "Visit me at" in log_path.read_text(), what="Flower's banner line")

    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # raises on a line in another format
    events = Counter((r["logger"], r["event"]) for r in records)
    assert [event for event, count in events.items() if count > 1] == []
    # No --address given: flowerconfig.py's loopback default.
    assert ("flower.command", f"Visit me at http://127.0.0.1:{port}") in events


def test_flower_refuses_to_start_without_authentication(redis_client):
    """The runbook's command without FLOWER_BASIC_AUTH (or another auth option) exits at once, saying why,
    instead of serving an unauthenticated UI that can revoke tasks and shut workers down."""
    env = _flower_env()
    env.pop("FLOWER_BASIC_AUTH", None)
    env.pop("FLOWER_AUTH", None)
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "marketplace", "flower", f"--port={free_port()}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "refusing to start without authentication: set FLOWER_BASIC_AUTH=user:password" in result.stderr


def test_the_worker_page_masks_the_broker_password_and_the_sentry_dsn(redis_client, start_worker, worker_env, tmp_path):
    """Given a worker and Flower whose broker URL carries a password, with a Sentry DSN, then Flower's page of
    that worker (its Config tab: ``inspect conf``) shows neither secret, and the settings masked."""
    broker, password = broker_url_with_password("s3cret-flower-pw")
    dsn_key = "fedcba9876543210"
    secrets = {"CELERY_BROKER_URL": broker, "SENTRY_DSN": f"https://{dsn_key}@127.0.0.1:9/1"}
    worker = start_worker(env=secrets)
    with running_flower(_flower_env(FLOWER_BASIC_AUTH=CREDENTIALS, **secrets), tmp_path / "flower.log") as port:
        url = f"http://127.0.0.1:{port}/worker/{worker.name}"
        page = wait_for(
            lambda: (text := _page_once_served(url)) and "CELERY_BROKER_URL" in text and text,
            what="the worker page with its configuration",
        )
    assert password not in page
    assert dsn_key not in page
    assert broker.replace(f":{password}@", f":{MASK}@").split("@")[0] + "@" in page


def test_the_broker_tab_lists_the_queues(flower):
    """Flower's Broker tab picks its client by the broker URL's scheme: with the project's transport the URL
    reads ``redis://`` and the tab lists the default queue, where it answered 404 "'redis' broker is not
    supported"."""
    port, _ = flower
    page = _get(f"http://127.0.0.1:{port}/broker")
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
