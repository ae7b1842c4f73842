"""A local Sentry for the tests: an HTTP server that takes the envelopes the real sentry-sdk sends (plain
or gzip) and keeps their items, so a test asserts on exactly what would have reached Sentry.

Envelope format (https://develop.sentry.dev/sdk/envelopes/): a JSON header line, then items, each a JSON
header line and a payload - ``length`` bytes when the header says so, otherwise up to the next newline.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.net import LocalServer

__all__ = ["Envelope", "Item", "SentryReceiver", "parse_envelope"]

_ENVELOPE_PATH = re.compile(r"^/api/(?P<project>\d+)/envelope/?$")


@dataclass(frozen=True)
class Item:
    """One envelope item: ``type`` is event, check_in, transaction, session, client_report..."""

    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        return str(self.headers.get("type", ""))

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True)
class Envelope:
    project: str
    headers: dict[str, Any]
    items: list[Item]
    #: The decompressed request body, for "this value appears nowhere" assertions.
    raw: bytes


def parse_envelope(data: bytes) -> tuple[dict[str, Any], list[Item]]:
    """The envelope header and items of ``data`` (an uncompressed envelope)."""
    header_line, _, rest = data.partition(b"\n")
    items: list[Item] = []
    while rest:
        item_header_line, _, rest = rest.partition(b"\n")
        if not item_header_line.strip():
            continue
        item_headers = json.loads(item_header_line)
        length = item_headers.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            rest = rest.removeprefix(b"\n")
        items.append(Item(item_headers, payload))
    return json.loads(header_line), items


class SentryReceiver(LocalServer):
    """Start with ``start()``; point the SDK at ``dsn``; stop with ``stop()``. Thread-safe."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self._changed = threading.Condition()
        super().__init__(self._handler(), name="sentry-receiver")

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"

    def items(self, type: str | None = None) -> list[Item]:
        """Every item received so far, in arrival order; only those of ``type`` if given."""
        with self._changed:
            return [item for envelope in self.envelopes for item in envelope.items if type in (None, item.type)]

    def payloads(self, type: str) -> list[Any]:
        """The JSON payloads of the items of ``type`` received so far."""
        return [item.json for item in self.items(type)]

    def raw(self) -> bytes:
        """Every envelope received so far, decompressed, one after the other."""
        with self._changed:
            return b"\n".join(envelope.raw for envelope in self.envelopes)

    def wait_for(
        self, type: str, where: Callable[[Any], bool] = lambda _: True, *, count: int = 1, timeout: float = 60.0
    ) -> list[Any]:
        """Block until ``count`` payloads of ``type`` match ``where``; return all that match, or fail."""

        def matching() -> list[Any]:
            return [payload for payload in self.payloads(type) if where(payload)]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= count, timeout=timeout):
                received = [item.type for item in self.items()]
                raise AssertionError(f"{count} matching {type!r} items not received in {timeout} s: {received}")
            return matching()

    def _receive(self, project: str, body: bytes) -> None:
        headers, items = parse_envelope(body)
        with self._changed:
            self.envelopes.append(Envelope(project, headers, items, body))
            self._changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the SDK keeps its connection open

            def do_POST(self) -> None:
                match = _ENVELOPE_PATH.match(self.path.partition("?")[0])
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "identity").lower()
                if match is None or encoding not in ("gzip", "identity"):
                    self._reply(404 if match is None else 415, b"{}")
                    return
                receiver._receive(match["project"], gzip.decompress(body) if encoding == "gzip" else body)
                self._reply(200, b"{}")

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test output is for assertions

        return Handler
