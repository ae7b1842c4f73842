"""A local SMTP server for tests (aiosmtpd): the email provider's network boundary, nothing more."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from email import message_from_bytes
from typing import Any

from aiosmtpd.controller import Controller

from tests.net import free_port


def max_per_window(times: list[float], window: float = 1.0) -> int:
    """The most of ``times`` (seconds) that fall in any one ``window`` (a sliding window, not clock seconds)."""
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


#: Recipients whose address starts with this are refused permanently (550), like an unknown mailbox.
REFUSED_PREFIX = "refused"


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802 - aiosmtpd API
        if address.startswith(REFUSED_PREFIX):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
        message = message_from_bytes(envelope.content)
        with self._sink.lock:
            if self._sink.throttle_answers:
                # A provider's rate limit: the message is not taken, the client is told to come back later.
                self._sink.throttle_answers -= 1
                self._sink.throttled_at.append(time.time())
                return self._sink.throttle_reply
            self._sink.messages.append(message)
            self._sink.received_at.append(time.time())
        # A slow provider: the message is taken, its "250 OK" comes later.
        await asyncio.sleep(self._sink.reply_delay_seconds)
        if not self._sink.gate.is_set():  # held: no answer until the test releases it
            with self._sink.lock:
                self._sink.held += 1
            await asyncio.to_thread(self._sink.gate.wait)
            with self._sink.lock:
                self._sink.held -= 1
        return "250 OK"


class SmtpSink:
    """Records every message it receives, and when (``received_at``, unix time, in step with ``messages``);
    ``deliveries_by_key()`` counts them by ``X-Idempotency-Key``. ``throttle(n)`` answers the next ``n`` messages
    with a throttling reply instead of taking them, recording when (``throttled_at``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[Any] = []
        self.received_at: list[float] = []
        self.throttled_at: list[float] = []
        self.throttle_answers = 0
        self.throttle_reply = "451 4.7.1 rate limit exceeded, try again later"
        #: Seconds before each accepted message's reply (0: at once).
        self.reply_delay_seconds = 0.0
        #: Open: replies go out; closed (``hold()``): each message is taken and its reply waits for ``release()``.
        self.gate = threading.Event()
        self.gate.set()
        #: Messages whose reply waits at the closed gate now.
        self.held = 0
        self.port = free_port()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self.release()
        self._controller.stop()

    def hold(self) -> None:
        """From now on, take each message and hold its reply - a provider that stopped answering."""
        self.gate.clear()

    def release(self) -> None:
        """Answer the held messages and every later one at once."""
        self.gate.set()

    def held_count(self) -> int:
        with self.lock:
            return self.held

    def clear(self) -> None:
        self.release()
        with self.lock:
            self.messages.clear()
            self.received_at.clear()
            self.throttled_at.clear()
            self.throttle_answers = 0
        self.reply_delay_seconds = 0.0

    def throttle(self, answers: int, reply: str = "451 4.7.1 rate limit exceeded, try again later") -> None:
        with self.lock:
            self.throttle_answers, self.throttle_reply = answers, reply

    def deliveries_by_key(self) -> Counter[str]:
        with self.lock:
            return Counter(str(m["X-Idempotency-Key"]) for m in self.messages)

    def subjects(self) -> list[str]:
        with self.lock:
            return [str(m["Subject"]) for m in self.messages]
