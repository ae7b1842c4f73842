"""Logging: structlog events and stdlib records share one handler and one chain; JSON off a terminal,
Celery-shaped lines on one; task and trace context on every line; secrets and PII keys redacted.

Tests taking ``route`` run twice: with another handler listening (a structlog event goes through stdlib
logging) and with the configured handler alone (it is written to that handler's stream directly)."""

from __future__ import annotations

import copy
import io
import json
import logging
import multiprocessing
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sentry_sdk
import sentry_sdk.transport
import structlog
from opentelemetry.sdk.trace import TracerProvider

from observability.logs import (
    REDACTED,
    bind_task_context,
    clear_task_context,
    configure_logging,
    redact_mapping,
)

TASK = {"task_name": "promotions.tasks.check_active_promos", "task_id": "6f1c2d3e-0000-4000-8000-000000000001"}
CONSOLE_HEAD = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: (?P<level>[A-Z]+)/(?P<process>[\w-]+)\]"
# Collected before any test runs: a test that turns Sentry on patches it for the rest of the session.
STDLIB_CALL_HANDLERS = logging.Logger.callHandlers


class TtyStream(io.StringIO):
    """A terminal, as far as ``isatty`` can tell."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test configures logging its own way; the session's configuration comes back afterwards."""
    root = logging.getLogger()
    handlers, level, srcfile = root.handlers[:], root.level, logging._srcfile
    config = structlog.get_config()
    yield
    clear_task_context()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging._srcfile = srcfile
    structlog.reset_defaults()
    structlog.configure(**config)


@pytest.fixture(params=["stdlib", "direct"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``stdlib``: another handler listens too. ``direct``: the configured handler alone, stdlib's own dispatch."""
    if request.param == "direct":
        monkeypatch.setattr(logging.Logger, "callHandlers", STDLIB_CALL_HANDLERS)
    return str(request.param)


def ours() -> logging.Handler:
    [handler] = [
        h for h in logging.getLogger().handlers if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
    ]
    return handler


def configured(
    fmt: str = "json",
    *,
    level: str | int = "INFO",
    stream: io.StringIO | None = None,
    route: str | None = None,
) -> io.StringIO:
    stream = io.StringIO() if stream is None else stream
    configure_logging(level=level, fmt=fmt, stream=stream)
    if route == "direct":  # pytest's capture handlers leave the root until the test's end
        logging.getLogger().handlers[:] = [ours()]
    elif route == "stdlib":
        logging.getLogger().addHandler(logging.NullHandler())
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_event_is_one_json_object_with_the_header_keys(route):
    """An event becomes one JSON line: UTC timestamp, level, logger, process, event, then its own keys."""
    stream = configured("json", route=route)

    structlog.get_logger("promotions.services").info("promo.activated", promo_id=7, activation_lag_ms=12.5)

    [line] = json_lines(stream)
    assert list(line)[:5] == ["timestamp", "level", "logger", "process", "event"]
    assert line["level"] == "info"
    assert line["logger"] == "promotions.services"
    assert line["process"] == multiprocessing.current_process().name
    assert line["event"] == "promo.activated"
    assert line["promo_id"] == 7
    assert line["activation_lag_ms"] == 12.5
    assert line["timestamp"].endswith("Z")
    timestamp = datetime.fromisoformat(line["timestamp"])
    assert timestamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - timestamp) < timedelta(seconds=5)


def test_stdlib_record_from_celery_goes_through_the_same_chain():
    """A stdlib record (Celery, Django, kombu) becomes the same JSON shape, its message the event."""
    stream = configured("json")

    logging.getLogger("celery.worker").info("Task %s received", "x")

    [line] = json_lines(stream)
    assert line["event"] == "Task x received"
    assert line["logger"] == "celery.worker"
    assert line["level"] == "info"
    assert line["process"] == multiprocessing.current_process().name
    assert line["timestamp"].endswith("Z")


def test_task_context_is_on_every_line_until_cleared(route):
    """Inside a task, structlog events and stdlib records carry task name, id and retries; after, neither does."""
    stream = configured("json", route=route)

    bind_task_context(**TASK, retries=2)
    structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)
    logging.getLogger("celery.worker.consumer").info("Task succeeded")
    clear_task_context()
    structlog.get_logger("promotions.services").info("promo.ended", promo_id=7)

    inside_event, inside_record, after = json_lines(stream)
    for line in (inside_event, inside_record):
        assert {key: line[key] for key in ("task_name", "task_id", "retries")} == {**TASK, "retries": 2}
    assert "task_name" not in after
    assert "task_id" not in after


def test_console_lines_follow_celerys_worker_formats(route):
    """On the console a line reads like Celery's: ``[time: LEVEL/process]``, then ``[name(id)]`` in a task."""
    stream = configured("console", route=route)
    log = structlog.get_logger("promotions.services")

    logging.getLogger("celery.worker").warning("Task x received")
    bind_task_context(**TASK, retries=0)
    log.info("promo.activated", promo_id=7, reason="window open")

    outside, inside = stream.getvalue().splitlines()
    assert re.fullmatch(CONSOLE_HEAD + r" Task x received", outside)
    match = re.fullmatch(CONSOLE_HEAD + r"\[(?P<task>[^\]]+)\] promo\.activated (?P<pairs>.*)", inside)
    assert match, inside
    assert match["level"] == "INFO"
    assert match["process"] == multiprocessing.current_process().name
    assert match["task"] == f"{TASK['task_name']}({TASK['task_id']})"
    assert match["pairs"] == "promo_id=7 reason='window open' retries=0"
    assert "\x1b[" not in stream.getvalue()


def test_trace_and_span_ids_are_added_inside_a_span_only(route):
    """Inside an OpenTelemetry span a line carries its trace id (32 hex) and span id (16 hex); outside, not."""
    stream = configured("json", route=route)
    log = structlog.get_logger("promotions.services")
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer(__name__)

    with tracer.start_as_current_span("promos.sync") as span:
        log.info("promo.activated", promo_id=7)
        logging.getLogger("celery.worker").info("inside the span")
    log.info("promo.ended", promo_id=7)

    *inside, outside = json_lines(stream)
    context = span.get_span_context()
    for line in inside:
        assert line["trace_id"] == format(context.trace_id, "032x")
        assert line["span_id"] == format(context.span_id, "016x")
        assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
        assert re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_secret_and_pii_values_are_redacted_at_any_depth_without_touching_the_caller(settings, route):
    """Configured PII keys (exact, any case) and keys containing a secret word lose their values, nested too;
    the objects the caller passed are not mutated."""
    settings.LOG_REDACT_KEYS = ["email", "customer_ref"]
    stream = configured("json", route=route)
    headers = {"Authorization": "Bearer abc", "X-Api-Token": "t0k3n", "X-Api-Key": "k3y", "Accept": "json"}
    recipients = [{"Email": "jane@example.com", "name": "Jane"}, {"customer_ref": "C-1", "name": "Joe"}]
    original = copy.deepcopy((headers, recipients))

    structlog.get_logger("promotions.channels").info(
        "notification.batch",
        EMAIL_HOST_PASSWORD="hunter2",
        email="jane@example.com",
        email_count=2,
        request={"headers": headers, "recipients": recipients},
    )

    [line] = json_lines(stream)
    assert line["EMAIL_HOST_PASSWORD"] == REDACTED
    assert line["email"] == REDACTED
    assert line["email_count"] == 2  # PII keys match whole keys only
    assert line["request"]["headers"] == {
        "Authorization": REDACTED,
        "X-Api-Token": REDACTED,
        "X-Api-Key": REDACTED,
        "Accept": "json",
    }
    assert line["request"]["recipients"] == [
        {"Email": REDACTED, "name": "Jane"},
        {"customer_ref": REDACTED, "name": "Joe"},
    ]
    assert (headers, recipients) == original


def test_redact_mapping_copies_only_what_it_changes(settings):
    """``redact_mapping`` returns a new top-level dict; unchanged nested containers are shared, not copied."""
    settings.LOG_REDACT_KEYS = ["phone"]
    clean = {"sku": "A-1", "tags": ["flash", "promo"]}
    payload = {"order": clean, "contact": ({"Phone": "+33 6 00 00 00 00"},), "dsn": "https://key@sentry.example/1"}

    redacted = redact_mapping(payload)

    assert redacted == {"order": clean, "contact": ({"Phone": REDACTED},), "dsn": REDACTED}
    assert redacted is not payload
    assert redacted["order"] is clean
    assert payload["contact"] == ({"Phone": "+33 6 00 00 00 00"},)


def test_passwords_inside_urls_are_masked_whatever_the_key(settings):
    """A URL's credentials are masked in any string value, at any depth, under keys that name no secret: a
    broker URL in an error message, a DSN in a list."""
    settings.LOG_REDACT_KEYS = []
    payload = {"error": "cannot reach redis://:hunter2@cache:6379/0", "urls": ["https://key@sentry.example/1"]}

    redacted = redact_mapping(payload)

    assert redacted == {
        "error": "cannot reach redis://:********@cache:6379/0",
        "urls": ["https://********@sentry.example/1"],
    }
    assert payload["error"].endswith("hunter2@cache:6379/0")


def test_exceptions_are_rendered_as_a_string_field(route):
    """``log.exception`` and stdlib ``logger.exception`` put the formatted traceback in ``exception``."""
    stream = configured("json", route=route)

    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        structlog.get_logger("promotions.services").exception("promo.sync_failed", promo_id=7)
        logging.getLogger("celery.app.trace").exception("Task failed")

    for line in json_lines(stream):
        assert line["level"] == "error"
        assert isinstance(line["exception"], str)
        assert line["exception"].startswith("Traceback (most recent call last):")
        assert "ZeroDivisionError: division by zero" in line["exception"]


def test_auto_is_json_off_a_terminal_and_coloured_console_on_one(route):
    """``auto`` writes JSON to a stream that is not a terminal and readable, coloured lines to one that is."""
    pipe = configured("auto", route=route)
    structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)
    assert json_lines(pipe)[0]["event"] == "promo.activated"

    terminal = configured("auto", stream=TtyStream(), route=route)
    structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)
    assert "promo.activated" in terminal.getvalue()
    assert "\x1b[" in terminal.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(terminal.getvalue())


def test_configuring_again_replaces_the_handler(route):
    """Django's ready() and Celery's setup_logging both configure: one handler remains, on the last stream."""
    first = configured("json", route=route)
    second = configured("json", level=logging.WARNING, route=route)  # Celery's signal passes a number

    structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)
    structlog.get_logger("promotions.services").warning("promo.skipped", promo_id=7)

    ours = [h for h in logging.getLogger().handlers if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)]
    assert len(ours) == 1
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["promo.skipped"]


def test_level_filters_structlog_events_and_stdlib_records_alike(route):
    """Below the configured level nothing is written, whichever API logged it."""
    stream = configured("json", level="WARNING", route=route)

    structlog.get_logger("promotions.services").info("promo.activated")
    logging.getLogger("celery.worker").info("Task x received")
    logging.getLogger("celery.worker").error("Task x failed")

    assert [line["event"] for line in json_lines(stream)] == ["Task x failed"]


def test_unknown_format_or_level_is_refused():
    """A typo in the format or level fails loudly instead of logging in some other way."""
    with pytest.raises(ValueError, match="fmt"):
        configure_logging(fmt="yaml", stream=io.StringIO())
    with pytest.raises(ValueError, match="level"):
        configure_logging(level="LOUD", stream=io.StringIO())


# --- Which way a structlog event goes ---------------------------------------------------------------------------


def test_with_our_handler_alone_a_structlog_event_makes_no_stdlib_record(route, monkeypatch):
    """When stdlib logging would give a record to the configured handler and nothing else, a structlog event is
    written to that handler's stream without one; stdlib records still go through the handler. With another
    handler listening, both go through it."""
    stream = configured("json", route=route)
    handled: list[str] = []
    handler = ours()
    handle = handler.handle

    def counting(record: logging.LogRecord) -> Any:
        handled.append(record.name)
        return handle(record)

    monkeypatch.setattr(handler, "handle", counting)

    structlog.get_logger("observability.task").info("task.finished", outcome="succeeded")
    logging.getLogger("celery.worker").info("Task x received")

    assert [line["event"] for line in json_lines(stream)] == ["task.finished", "Task x received"]
    expected = ["celery.worker"] if route == "direct" else ["observability.task", "celery.worker"]
    assert handled == expected


class Listener(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(record.name)


@pytest.mark.parametrize("where", ["root", "own logger", "parent logger"])
def test_another_handler_anywhere_on_the_way_gets_structlog_events(where):
    """A handler on the root (pytest's caplog), on the event's logger or on one of its parents (an
    OpenTelemetry log handler, say) gets structlog events, and the line is written once."""
    stream = configured("json", route="direct")
    listener = Listener()
    name = {"root": "", "own logger": "promotions.services", "parent logger": "promotions"}[where]
    logging.getLogger(name).addHandler(listener)
    try:
        structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)
    finally:
        logging.getLogger(name).removeHandler(listener)

    assert listener.names == ["promotions.services"]
    assert [line["event"] for line in json_lines(stream)] == ["promo.activated"]


def test_caplog_gets_structlog_events(caplog):
    """pytest's caplog sees structlog events (tests of other modules rely on it)."""
    stream = configured("json")

    structlog.get_logger("observability.sentry").error("sentry.report_failed", dead_letter_id=42)

    assert "sentry.report_failed" in caplog.text
    assert [line["event"] for line in json_lines(stream)] == ["sentry.report_failed"]


def test_a_patched_dispatch_gets_structlog_events(monkeypatch):
    """Whatever wraps stdlib's dispatch of records (Sentry's logging integration does) gets structlog events."""
    stream = configured("json", route="direct")
    seen: list[str] = []

    def spying(self: logging.Logger, record: logging.LogRecord) -> None:
        seen.append(record.name)
        STDLIB_CALL_HANDLERS(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", spying)

    structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)

    assert seen == ["promotions.services"]
    assert [line["event"] for line in json_lines(stream)] == ["promo.activated"]


def test_filters_and_logging_disable_apply_to_structlog_events():
    """A filter on the event's logger and ``logging.disable`` act on structlog events as on stdlib records."""
    stream = configured("json", route="direct")
    service = logging.getLogger("promotions.services")

    def no_skips(record: logging.LogRecord) -> bool:
        return "skipped" not in str(record.msg)

    service.addFilter(no_skips)
    try:
        structlog.get_logger("promotions.services").info("promo.skipped", promo_id=7)
        structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)
    finally:
        service.removeFilter(no_skips)
    logging.disable(logging.WARNING)
    try:
        structlog.get_logger("promotions.services").warning("promo.late", promo_id=7)
    finally:
        logging.disable(logging.NOTSET)

    assert [line["event"] for line in json_lines(stream)] == ["promo.activated"]


def test_sentry_logging_integration_gets_structlog_events():
    """The web role's Sentry (its logging integration on) turns a structlog error into an event, with the
    configured handler alone on the root; the line is written once."""
    stream = configured("json", route="direct")
    events: list[dict[str, Any]] = []

    def collect(event: Any, hint: Any) -> None:  # returns None: the event is dropped
        events.append(event)

    class Nowhere(sentry_sdk.transport.Transport):
        def capture_envelope(self, envelope: Any) -> None:
            pass  # nothing leaves the process

    sentry_sdk.init(
        dsn="https://key@sentry.invalid/1", before_send=collect, transport=Nowhere, auto_enabling_integrations=False
    )
    try:
        structlog.get_logger("promotions.services").error("promo.sync_failed", promo_id=7)
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)

    assert [event["logger"] for event in events] == ["promotions.services"]
    assert [line["event"] for line in json_lines(stream)] == ["promo.sync_failed"]


class LockProbe(io.StringIO):
    """Records, for each write, whether another thread could take the handler's lock at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.lock_free_during_write: list[bool] = []

    def write(self, text: str) -> int:
        free: list[bool] = []

        def try_lock() -> None:
            lock = ours().lock
            assert lock is not None
            acquired = lock.acquire(blocking=False)
            if acquired:
                lock.release()
            free.append(acquired)

        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join()
        self.lock_free_during_write += free
        return super().write(text)


def test_structlog_events_and_stdlib_records_are_written_under_the_handlers_lock(route):
    """Both kinds of line are written while holding the handler's lock, so lines of concurrent threads never
    interleave, whichever way the event went."""
    stream = configured("json", stream=LockProbe(), route=route)

    structlog.get_logger("observability.task").info("task.finished", outcome="succeeded")
    logging.getLogger("celery.worker").info("Task x received")

    assert [line["event"] for line in json_lines(stream)] == ["task.finished", "Task x received"]
    assert stream.lock_free_during_write == [False, False]


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("disk full")


def test_a_line_that_cannot_be_written_is_reported_on_stderr_not_raised(route, capsys):
    """As stdlib's handler does: the failure is reported on stderr and the caller carries on."""
    configured("json", stream=BrokenStream(), route=route)

    structlog.get_logger("observability.task").info("task.finished", outcome="succeeded")

    err = capsys.readouterr().err
    assert "--- Logging error ---" in err
    assert "OSError: disk full" in err
