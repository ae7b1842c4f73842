"""Logging: structlog events and stdlib records (Django, Celery, kombu) through one processor chain, one handler.

The contract, for whoever reads the lines:

- ``configure_logging()`` gives the root logger one stream handler (stderr by default). Off a terminal each
  line is a JSON object: ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``process`` (``MainProcess``,
  ``ForkPoolWorker-1``), ``event`` (a stdlib record's message), then every bound and event key, and
  ``exception`` (the formatted traceback) when there is one. On a terminal the lines follow Celery's formats:
  ``[asctime: LEVEL/process] event key=value ...``, with ``[task_name(task_id)]`` after the brackets inside a
  task.
- Inside a task (``bind_task_context``) every line carries ``task_name``, ``task_id`` and ``retries``; inside
  a valid OpenTelemetry span it carries ``trace_id`` and ``span_id`` (hex).
- Values of secret-like keys (any key containing ``password``, ``token``, ``secret``, ...) and of the PII keys
  of ``settings.LOG_REDACT_KEYS`` become ``"[redacted]"``, at any depth; objects the caller passed are never
  mutated. ``redact_mapping`` applies the same rule elsewhere (Sentry events).
- Records carry no caller (file, line, function): no line shows it, and finding it costs a stack walk per line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import structlog
from django.conf import settings
from opentelemetry.trace import get_current_span
from structlog.typing import EventDict, Processor, WrappedLogger

from observability.logs.redaction import redact_event
from observability.logs.renderers import ConsoleRenderer, JsonRenderer, Renderer

__all__ = ["bind_task_context", "clear_task_context", "configure_logging"]

_FORMATS = ("auto", "json", "console")
_TASK_KEYS = ("task_name", "task_id", "retries")


def bind_task_context(*, task_name: str, task_id: str, retries: int) -> None:
    """Carry the running task on every line this context logs, until ``clear_task_context``."""
    structlog.contextvars.bind_contextvars(task_name=task_name, task_id=task_id, retries=retries)


def clear_task_context() -> None:
    """Forget everything bound to this context: the task's keys and whatever its code bound during the run.

    The next task that runs in this process (prefork child or thread) starts from a clean context.
    """
    structlog.contextvars.clear_contextvars()


# --- Processors ---------------------------------------------------------------------------------------------


def _add_trace_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    context = get_current_span().get_span_context()
    if context.is_valid and "trace_id" not in event_dict:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


#: Longest string value of a line, in characters; a longer one keeps its head and tail around a note of the cut.
#: One 20 MB task argument wrote a 63 MB line (issue 21's probe); a traceback's frames fit well within it.
MAX_FIELD_CHARS = 16_384
_HEAD_CHARS = 12_288


def _cap_long_values(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if type(value) is str and len(value) > MAX_FIELD_CHARS:
            cut = len(value) - MAX_FIELD_CHARS
            tail = MAX_FIELD_CHARS - _HEAD_CHARS
            event_dict[key] = f"{value[:_HEAD_CHARS]} ... [{cut} characters cut] ... {value[-tail:]}"
    return event_dict


# Run when the line is emitted, for structlog events and stdlib records alike; the renderer runs in the handler.
# These are module-level objects, so every configure_logging() builds an identical chain: loggers cached by
# an earlier call (cache_logger_on_first_use) behave exactly like new ones.
_SHARED_PROCESSORS: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    _add_trace_context,
    redact_event,
    structlog.processors.format_exc_info,
    _cap_long_values,  # after format_exc_info: a traceback is capped too
)


# --- Structlog events straight to the handler's stream --------------------------------------------------------
#
# A structlog event handed to stdlib logging costs a LogRecord, a second one (ProcessorFormatter's copy), the
# event dict's copy and logging.Formatter.format: the summary line took 46.5 us inside a task and a span, and
# takes 22.9 written as below (timeit, best of 7, dev container; bench.hooks "summary line", best of 3 runs:
# 30.2 -> 19.0 us). So when our handler is the only thing stdlib would give the record to, the last processor
# renders the line and writes it to that handler's stream under that handler's lock (no interleaving with
# stdlib records), then drops the event (structlog.DropEvent, the documented way to end a chain). Anything else
# that would see the record - another handler (pytest's caplog, an OpenTelemetry log handler), a filter, a
# patched dispatch (Sentry's logging integration, on in the web role, wraps Logger.callHandlers), a logger class
# or record factory of its own, logging.disable - sends the event through stdlib logging as before.


def _stdlib_own(name: str) -> object:
    """``logging.Logger``'s method ``name`` as the logging module defines it; ``None`` (no direct route, ever) if
    something patched it before this module was imported."""
    method = getattr(logging.Logger, name)
    return method if getattr(method, "__module__", None) == "logging" else None


_STDLIB_MAKE_RECORD = _stdlib_own("makeRecord")
_STDLIB_HANDLE = _stdlib_own("handle")
_STDLIB_CALL_HANDLERS = _stdlib_own("callHandlers")
# Method names structlog.stdlib.BoundLogger passes to processors; any other goes through stdlib logging.
_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_LEVEL_NAMES = {level: logging.getLevelName(level) for level in _METHOD_LEVELS.values()}


class _DirectRoute:
    """Writes structlog events to ``handler``'s stream, as ``handler`` would, when nothing else would see them."""

    def __init__(self, handler: _StructlogHandler, renderer: Renderer) -> None:
        self.handler = handler
        self.renderer = renderer

    def reaches_only_handler(self, logger: logging.Logger, level: int) -> bool:
        """Whether stdlib logging would give a record of ``logger`` at ``level`` to ``handler`` and nothing else."""
        handler = self.handler
        logger_class = type(logger)
        if (
            # structlog's LoggerFactory makes loggers of a subclass that only fixes findCaller; whatever
            # overrides or patches (Sentry) how a record is made and dispatched must see every event.
            getattr(logger_class, "makeRecord", None) is not _STDLIB_MAKE_RECORD
            or logger_class.handle is not _STDLIB_HANDLE
            or logger_class.callHandlers is not _STDLIB_CALL_HANDLERS
            or logging.getLogRecordFactory() is not logging.LogRecord
            or logger.filters
            or handler.filters
            or level < handler.level
            or not logger.isEnabledFor(level)
        ):
            return False
        # Logger.callHandlers' walk: the handlers of the logger and of its ancestors, up to propagate=False.
        reached = False
        current: logging.Logger | None = logger
        while current is not None:
            for other in current.handlers:
                if other is not handler:
                    return False
                reached = True
            if not current.propagate:
                break
            current = current.parent
        return reached

    def write(self, logger: logging.Logger, level: int, event_dict: EventDict) -> None:
        """Render and write one line as ``StreamHandler.emit`` would: under the handler's lock, then flush; a
        failure goes to ``handler.handleError`` (a traceback on stderr), never to the caller."""
        handler = self.handler
        try:
            line = self.renderer.render_line(event_dict, time.time(), _LEVEL_NAMES[level], logger.name, _process_name())
            handler.acquire()
            try:
                handler.stream.write(line + handler.terminator)
                handler.flush()
            finally:
                handler.release()
        except RecursionError:  # as StreamHandler.emit: see issue 36272
            raise
        except Exception:  # noqa: BLE001 - any failure to write, as StreamHandler.emit: reported, not raised
            record = logging.LogRecord(logger.name, level, "(unknown file)", 0, event_dict, None, None)
            handler.handleError(record)


def _process_name() -> str | None:
    """``LogRecord.processName``, found the way ``LogRecord`` finds it (billiard's pool children included)."""
    if not logging.logMultiprocessing:
        return None
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return "MainProcess"
    try:
        return multiprocessing.current_process().name  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - as LogRecord: the name is best effort, the line is written anyway
        return "MainProcess"


# The route to the handler of the last configure_logging(); checked on every event, so a handler that was
# replaced, or joined by another one, is never written to directly.
_route: _DirectRoute | None = None


def _write_or_wrap(logger: logging.Logger, method_name: str, event_dict: EventDict) -> Any:
    """The chain's last processor: write the line directly when only our handler would see it, else hand the
    event to ``ProcessorFormatter`` through stdlib logging."""
    route = _route
    level = _METHOD_LEVELS.get(method_name)
    if route is not None and level is not None and route.reaches_only_handler(logger, level):
        route.write(logger, level, event_dict)
        raise structlog.DropEvent  # written: stdlib logging must not write it again
    return structlog.stdlib.ProcessorFormatter.wrap_for_formatter(logger, method_name, event_dict)


# --- Configuration ------------------------------------------------------------------------------------------


class _StructlogHandler(logging.StreamHandler[TextIO]):
    """The handler ``configure_logging`` installs: marked by its class, so a second call replaces it."""


def configure_logging(*, level: str | int | None = None, fmt: str | None = None, stream: TextIO | None = None) -> None:
    """Send structlog events and stdlib records to ``stream`` through one processor chain; safe to call again.

    ``level`` (a name or a number: Celery's ``setup_logging`` signal passes a number) defaults to
    ``settings.LOG_LEVEL``; ``fmt`` (``auto``, ``json`` or ``console``) to ``settings.LOG_FORMAT``, where
    ``auto`` means JSON unless ``stream`` is a terminal; ``stream`` to ``sys.stderr``. A second call replaces
    the handler of the first; handlers installed by others (pytest's capture, Sentry) are left alone.
    """
    global _route
    numeric_level = _numeric_level(settings.LOG_LEVEL if level is None else level)
    fmt = settings.LOG_FORMAT if fmt is None else fmt
    if fmt not in _FORMATS:
        raise ValueError(f"fmt={fmt!r} must be one of {', '.join(_FORMATS)}")
    stream = sys.stderr if stream is None else stream
    tty = stream.isatty()
    renderer: JsonRenderer | ConsoleRenderer = (
        JsonRenderer() if fmt == "json" or (fmt == "auto" and not tty) else ConsoleRenderer(colours=tty)
    )

    handler = _StructlogHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[renderer], foreign_pre_chain=list(_SHARED_PROCESSORS))
    )
    root = logging.getLogger()
    for previous in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    _route = _DirectRoute(handler, renderer)
    # Celery's per-task "received" and "succeeded" INFO lines repeat what each run's `task.finished` line
    # says, and the "received" one is written by the worker's main process, the throughput bottleneck.
    lifecycle_level = logging.NOTSET if settings.LOG_TASK_LIFECYCLE_LINES else logging.WARNING
    for name in _CELERY_LIFECYCLE_LOGGERS:
        logging.getLogger(name).setLevel(lifecycle_level)
    # No line shows the caller (file, line, function) and finding it walks the stack for every record:
    # 6.4 us of a 35.5 us JSON line from structlog, 3.3 of 27.7 from stdlib (timeit, dev container).
    # The switch is process-wide, as the logging HOWTO's "Optimization" section documents it.
    logging._srcfile = None

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            _write_or_wrap,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


_CELERY_LIFECYCLE_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def _numeric_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return logging.getLevelNamesMapping()[level.upper()]
    except KeyError:
        raise ValueError(f"level={level!r} is not a logging level name") from None
