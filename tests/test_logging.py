"""Logging: structlog events and stdlib records share one handler and one chain; JSON off a terminal,
Celery-shaped lines on one; task and trace context on every line; secrets and PII keys redacted."""

from __future__ import annotations

import copy
import io
import json
import logging
import multiprocessing
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from observability.logging import (
    REDACTED,
    bind_task_context,
    clear_task_context,
    configure_logging,
    redact_mapping,
)

TASK = {"task_name": "promotions.tasks.check_active_promos", "task_id": "6f1c2d3e-0000-4000-8000-000000000001"}
CONSOLE_HEAD = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: (?P<level>[A-Z]+)/(?P<process>[\w-]+)\]"


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


def configured(fmt: str = "json", *, level: str | int = "INFO", stream: io.StringIO | None = None) -> io.StringIO:
    stream = io.StringIO() if stream is None else stream
    configure_logging(level=level, fmt=fmt, stream=stream)
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_event_is_one_json_object_with_the_header_keys():
    """An event becomes one JSON line: UTC timestamp, level, logger, process, event, then its own keys."""
    stream = configured("json")

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


def test_task_context_is_on_every_line_until_cleared():
    """Inside a task, structlog events and stdlib records carry task name, id and retries; after, neither does."""
    stream = configured("json")

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


def test_console_lines_follow_celerys_worker_formats():
    """On the console a line reads like Celery's: ``[time: LEVEL/process]``, then ``[name(id)]`` in a task."""
    stream = configured("console")
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


def test_trace_and_span_ids_are_added_inside_a_span_only():
    """Inside an OpenTelemetry span a line carries its trace id (32 hex) and span id (16 hex); outside, not."""
    stream = configured("json")
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


def test_secret_and_pii_values_are_redacted_at_any_depth_without_touching_the_caller(settings):
    """Configured PII keys (exact, any case) and keys containing a secret word lose their values, nested too;
    the objects the caller passed are not mutated."""
    settings.LOG_REDACT_KEYS = ["email", "customer_ref"]
    stream = configured("json")
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


def test_exceptions_are_rendered_as_a_string_field():
    """``log.exception`` and stdlib ``logger.exception`` put the formatted traceback in ``exception``."""
    stream = configured("json")

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


def test_auto_is_json_off_a_terminal_and_coloured_console_on_one():
    """``auto`` writes JSON to a stream that is not a terminal and readable, coloured lines to one that is."""
    pipe = configured("auto")
    structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)
    assert json_lines(pipe)[0]["event"] == "promo.activated"

    terminal = configured("auto", stream=TtyStream())
    structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)
    assert "promo.activated" in terminal.getvalue()
    assert "\x1b[" in terminal.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(terminal.getvalue())


def test_configuring_again_replaces_the_handler():
    """Django's ready() and Celery's setup_logging both configure: one handler remains, on the last stream."""
    first = configured("json")
    second = configured("json", level=logging.WARNING)  # Celery's signal passes a number

    structlog.get_logger("promotions.services").info("promo.activated", promo_id=7)
    structlog.get_logger("promotions.services").warning("promo.skipped", promo_id=7)

    ours = [h for h in logging.getLogger().handlers if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)]
    assert len(ours) == 1
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["promo.skipped"]


def test_level_filters_structlog_events_and_stdlib_records_alike():
    """Below the configured level nothing is written, whichever API logged it."""
    stream = configured("json", level="WARNING")

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
