"""Small network helpers for tests that start their own servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.utils import timezone


def promo_create_request(port: int, token: str, product_id: int, title: str) -> urllib.request.Request:
    """``POST /api/promos`` to a local web server: a valid promo starting tomorrow, for an hour."""
    starts_at = timezone.now() + timedelta(days=1)  # within the API's horizon
    body = json.dumps({
        "product_id": product_id, "title": title, "discount_percent": 10,
        "starts_at": starts_at.isoformat(), "ends_at": (starts_at + timedelta(hours=1)).isoformat(),
    }).encode()  # fmt: skip
    return urllib.request.Request(
        f"http://127.0.0.1:{port}/api/promos", data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_status(request: urllib.request.Request | str, timeout: float = 5) -> int | None:
    """The HTTP status a local server answers ``request`` with, or None while nothing listens."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class LocalServer:
    """An HTTP server on 127.0.0.1 (a free port) served by a daemon thread: ``start()``, ``stop()``, ``port``.
    Test fakes of outside services (OTLP receiver, Sentry) build on it with their own request handler."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, name: str) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        # A short poll: stop() returns within it.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
