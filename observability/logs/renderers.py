"""The two line formats: a JSON object per line off a terminal, Celery's own line shape on one (with colours
on a TTY). Both render a structlog event dict; neither reads settings.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Protocol

from structlog.typing import EventDict, WrappedLogger

__all__ = ["ConsoleRenderer", "JsonRenderer", "Renderer", "render_record"]


class _UtcTimestamps:
    """ISO 8601 UTC timestamps with microseconds; the formatted second is reused (most lines share it)."""

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        last = self._last
        if last[0] != second:
            last = self._last = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{last[1]}.{int((created - second) * 1_000_000):06d}Z"


def _json_fallback(value: object) -> str:
    return str(value)


class JsonRenderer:
    """One JSON object per line; the header keys come first and come from the stdlib record."""

    _HEADER = frozenset({"timestamp", "level", "logger", "process", "event"})

    def __init__(self) -> None:
        self._timestamps = _UtcTimestamps()
        # One encoder for all lines: json.dumps with options builds a new one per call (~2 us).
        self._encoder = json.JSONEncoder(default=_json_fallback, separators=(",", ":"))

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        return render_record(self, event_dict)

    def render_line(
        self, event_dict: EventDict, created: float, levelname: str, logger_name: str, process: str | None
    ) -> str:
        line = {
            "timestamp": self._timestamps(created),
            "level": levelname.lower(),
            "logger": logger_name,
            "process": process,
            "event": event_dict.pop("event", ""),
        }
        if self._HEADER.isdisjoint(event_dict):
            line.update(event_dict)
        else:  # an event key named like a header key does not replace the header
            for key, value in event_dict.items():
                line.setdefault(key, value)
        return self._encoder.encode(line)


_LEVEL_COLOURS = {
    "DEBUG": "\x1b[34m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
_DIM, _RESET = "\x1b[2m", "\x1b[0m"


class ConsoleRenderer:
    """Celery's worker formats (``CELERY_WORKER_LOG_FORMAT``, ``..._TASK_LOG_FORMAT``) with key=value pairs."""

    def __init__(self, *, colours: bool) -> None:
        self._colours = colours

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        return render_record(self, event_dict)

    def render_line(
        self, event_dict: EventDict, created: float, levelname: str, logger_name: str, process: str | None
    ) -> str:
        event = event_dict.pop("event", "")
        exception = event_dict.pop("exception", None)
        # LogRecord.msecs, computed the way Python 3.11 computes it.
        msecs = int((created - int(created)) * 1000)
        asctime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) + f",{msecs:03d}"
        level = levelname
        if self._colours:
            level = f"{_LEVEL_COLOURS.get(level, '')}{level}{_RESET}"
        line = f"[{asctime}: {level}/{process}]"
        if "task_name" in event_dict and "task_id" in event_dict:
            line += f"[{event_dict.pop('task_name')}({event_dict.pop('task_id')})]"
        line += f" {event}"
        for key, value in event_dict.items():
            text = value if isinstance(value, str) and value and " " not in value else repr(value)
            line += f" {_DIM}{key}={_RESET}{text}" if self._colours else f" {key}={text}"
        if exception:
            line += f"\n{exception}"
        return line


class Renderer(Protocol):
    def render_line(
        self, event_dict: EventDict, created: float, levelname: str, logger_name: str, process: str | None
    ) -> str: ...


def render_record(renderer: Renderer, event_dict: EventDict) -> str:
    """Render a line handed over by ``ProcessorFormatter``: the header comes from the record it documents."""
    record: logging.LogRecord = event_dict.pop("_record")
    event_dict.pop("_from_structlog", None)
    return renderer.render_line(event_dict, record.created, record.levelname, record.name, record.processName)
