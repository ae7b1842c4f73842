"""``Failure``: everything known about a message that reached a dead end, made storable once.

The one description of a failed message that the message path builds (``observability.messaging``), the
dead-letter store keeps (``observability.deadletters``) and Sentry reports (``observability.sentry``). Imports
nothing from the project: every room may use it.
"""

from __future__ import annotations

import hashlib
import math
import socket
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from django.utils import timezone

__all__ = ["Failure"]

#: ``Failure`` fields stored in ``CharField(max_length=255)`` columns: a malformed message can name anything.
_BOUNDED_FIELDS = frozenset(
    {"task_name", "task_id", "queue", "exchange", "routing_key", "exception_type", "worker_host"}
)
_BOUNDED_LENGTH = 255
#: Longest traceback kept, in characters: its head and its tail (the raising frame and the message) around a
#: note of the cut. A 20 MB argument once made a 42 MB traceback in its dead letter (issue 21's probe).
MAX_TRACEBACK_CHARS = 65_536
_TRACEBACK_HEAD_CHARS = 16_384


def _capped_traceback(text: str) -> str:
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    tail = MAX_TRACEBACK_CHARS - _TRACEBACK_HEAD_CHARS
    return f"{text[:_TRACEBACK_HEAD_CHARS]}\n... [{len(text) - MAX_TRACEBACK_CHARS} characters cut] ...\n{text[-tail:]}"


def _storable(value: Any) -> Any:
    """``value`` (JSON-like) with what Postgres cannot store replaced, in strings and keys at any depth: NUL
    (text and jsonb refuse it) by U+FFFD, an unpaired surrogate (not UTF-8) by its ``\\udXXX`` escape, NaN and
    infinities (jsonb refuses them; kombu's JSON carries them) by their names; anything that is not JSON by text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        try:
            value.encode()
        except UnicodeEncodeError:
            value = value.encode(errors="backslashreplace").decode()
        return value
    if isinstance(value, dict):
        return {str(_storable(key)): _storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Not JSON: what AMQP's header tables decode to on RabbitMQ - a timestamp (``x-death``'s ``time``, added
    # by every hop through delayed delivery), a byte string, a decimal - kept as readable text.
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return _storable(bytes(value).decode(errors="backslashreplace"))
    return _storable(str(value))


@dataclass
class Failure:
    """Everything known about a message that reached a dead end; JSON-serialisable."""

    reason: str
    task_name: str = ""
    task_id: str = ""
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)
    queue: str = ""
    exchange: str = ""
    routing_key: str = ""
    raw_message: str = ""
    retries: int = 0
    delivery_count: int = 1
    exception_type: str = ""
    exception_message: str = ""
    traceback: str = ""
    worker_host: str = field(default_factory=socket.gethostname)
    failed_at: str = field(default_factory=lambda: timezone.now().isoformat())

    def __post_init__(self) -> None:
        # Made storable here, once, so no later write can fail on it: a failure Postgres refuses would be
        # deferred to the record task, which fails on it too, and so on forever.
        for name, value in list(vars(self).items()):
            value = _storable(value)
            if name in _BOUNDED_FIELDS:
                value = str(value)[:_BOUNDED_LENGTH]  # a malformed envelope's routing key may be a number
            elif name == "traceback":
                value = _capped_traceback(value)
            setattr(self, name, value)

    @property
    def dedup_key(self) -> str:
        if self.task_id:
            return self.task_id[:100]
        return "raw:" + hashlib.sha256(self.raw_message.encode()).hexdigest()[:64]

    @property
    def fingerprint(self) -> str:
        parts = f"{self.task_name}|{self.reason}|{self.exception_type}"
        return hashlib.sha256(parts.encode()).hexdigest()[:16]

    @property
    def trace_id(self) -> str:
        """The trace id of the W3C ``traceparent`` header the producer set, if any."""
        parts = str(self.headers.get("traceparent", "")).split("-")
        return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
