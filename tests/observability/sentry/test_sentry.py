"""Sentry reports what an operator acts on - one issue per final failure, none per retry, a check-in per
beat run - and never a task's arguments. The real sentry-sdk sends to a local receiver (``SentryReceiver``);
in-process tests call ``observability.sentry`` directly, the others run real worker processes.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from django.conf import settings
from sentry_sdk.utils import event_from_exception

from marketplace.celery import app as celery_app
from observability import sentry
from observability.deadletters.models import DeadLetter
from observability.failure import Failure
from observability.sentry import crons as sentry_crons
from observability.sentry import setup as sentry_setup
from promotions import tasks as promo_tasks
from tests import tasks
from tests.conftest import RESULT_TIMEOUT, WorkerProcess, stopped_after, wait_for
from tests.sentry_receiver import SentryReceiver, parse_envelope

#: The queue of the tests' Sentry-enabled workers (the session's shared worker does not consume it).
QUEUE = "sentry"
TRACE_ID = "ab" * 16
TRACEPARENT = f"00-{TRACE_ID}-{'cd' * 8}-01"
#: A value that must never reach Sentry.
SECRET = "s3cret-value-" + uuid.uuid4().hex
HOURLY = "cleanup-expired-promos-every-hour"


def token() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def receiver() -> Iterator[SentryReceiver]:
    receiver = SentryReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(autouse=True)
def _sentry_off_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with this process's Sentry off, and leaves it off."""
    monkeypatch.setattr(sentry_setup, "_initialised_in_pid", None)
    yield
    sentry_sdk.get_client().close()
    scope = sentry_sdk.get_global_scope()
    scope.set_client(None)
    scope.remove_tag("role")


@pytest.fixture
def sentry_on(settings, receiver: SentryReceiver) -> SentryReceiver:
    """Sentry on in the test process, sending to ``receiver``."""
    settings.SENTRY_DSN = receiver.dsn
    settings.SENTRY_ENVIRONMENT = "test"
    sentry.init_sentry(role="test")
    return receiver


def failure(**overrides: object) -> Failure:
    fields: dict[str, object] = {
        "reason": "non_retryable_error",
        "task_name": "promotions.tasks.sync_promo",
        "task_id": "task-" + token(),
        "args": [SECRET],
        "kwargs": {"email": SECRET},
        "headers": {"traceparent": TRACEPARENT, "argsrepr": repr([SECRET]), "task": "promotions.tasks.sync_promo"},
        "queue": "celery",
        "raw_message": SECRET,
        "exception_type": "observability.errors.PermanentError",
        "exception_message": "promo 7 has no product",
        "traceback": (
            "Traceback (most recent call last):\n"
            f'  File "{settings.BASE_DIR}/.venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in '
            "trace_task\n"
            "    R = retval = fun(*args, **kwargs)\n"
            "                 ^^^^^^^^^^^^^^^^^^^^\n"
            '  File "/usr/local/lib/python3.11/contextlib.py", line 81, in inner\n'
            "    return func(*args, **kwds)\n"
            f'  File "{settings.BASE_DIR}/promotions/services.py", line 42, in promos_sync_state\n'
            '    raise PermanentError(f"promo {promo_id} has no product")\n'
            "observability.errors.PermanentError: promo 7 has no product\n"
        ),
    }
    return Failure(**{**fields, **overrides})  # type: ignore[arg-type]


def reported(receiver: SentryReceiver) -> list[dict[str, Any]]:
    """The error events received, once everything the SDK of this process holds has been sent."""
    sentry_sdk.flush()
    return receiver.payloads("event")


def discarded_by_before_send(receiver: SentryReceiver) -> int:
    """Error events the SDK reports (client reports) it discarded in ``before_send``."""
    return sum(
        entry["quantity"]
        for report in receiver.payloads("client_report")
        for entry in report.get("discarded_events", [])
        if (entry["reason"], entry["category"]) == ("before_send", "error")
    )


def test_the_receiver_reads_items_with_and_without_length():
    """Envelope items are read by their ``length`` header, or up to the newline when there is none."""
    # The first payload holds a newline: only its length says where it ends.
    header, items = parse_envelope(
        b'{"event_id":"e"}\n{"type":"event","length":8}\n{"a":\n1}\n{"type":"session"}\n{"s":1}'
    )
    assert header == {"event_id": "e"}
    assert [(item.type, item.json) for item in items] == [("event", {"a": 1}), ("session", {"s": 1})]


class TestInit:
    def test_off_without_a_dsn(self, settings):
        """No ``SENTRY_DSN``: no client, and reporting and monitoring do nothing (the block still runs)."""
        settings.SENTRY_DSN = ""
        sentry.init_sentry(role="worker")
        assert not sentry_sdk.get_client().is_active()

        sentry.report_dead_letter(failure(), 1)
        ran = []
        with sentry.monitor_periodic_run(HOURLY):
            ran.append(True)
        assert ran == [True]

    def test_once_per_process_and_again_in_a_forked_child(self, sentry_on, monkeypatch):
        """A second call in the same process keeps the client; a forked child (another pid, the parent's
        flag inherited) builds its own, since the parent's transport does not work there."""
        client = sentry_sdk.get_client()
        sentry.init_sentry(role="test")
        assert sentry_sdk.get_client() is client

        monkeypatch.setattr(sentry_setup, "_initialised_in_pid", os.getpid() + 1)
        sentry.init_sentry(role="test")
        assert sentry_sdk.get_client() is not client
        assert sentry_sdk.get_client().is_active()

    def test_the_release_is_the_sdks_default_found_once(self, settings, receiver, monkeypatch):
        """Events carry the release the SDK would find itself (``SENTRY_RELEASE`` first); a forked child keeps
        the one its parent found instead of looking again (a ``git`` subprocess per recycled pool child)."""
        settings.SENTRY_DSN = receiver.dsn
        monkeypatch.setattr(sentry_setup, "_release", functools.cache(sentry_setup._release.__wrapped__))
        monkeypatch.setenv("SENTRY_RELEASE", "parent-release")
        sentry.init_sentry(role="test")
        assert sentry_sdk.get_client().options["release"] == "parent-release"

        monkeypatch.setenv("SENTRY_RELEASE", "looked-up-again")
        monkeypatch.setattr(sentry_setup, "_initialised_in_pid", os.getpid() + 1)
        sentry.init_sentry(role="test")
        assert sentry_sdk.get_client().options["release"] == "parent-release"

    def test_no_pii_no_frame_variables_no_tracing(self, sentry_on):
        """No PII, no task arguments, no frame variables (set explicitly: ``data_collection``, which
        supersedes the deprecated ``send_default_pii``), and no transactions (OpenTelemetry traces)."""
        client = sentry_sdk.get_client()
        collection = client.options["data_collection"]
        assert client.should_send_default_pii() is False
        assert collection["provided_by_user"] is True
        assert (collection["user_info"], collection["queues"], collection["stack_frame_variables"]) == (
            False, False, False,
        )  # fmt: skip
        assert client.options["traces_sample_rate"] is None
        assert client.options["environment"] == "test"

    def test_a_producers_publish_carries_no_sentry_headers(self, sentry_on, broker):
        """With Sentry on as in the web and beat, a published message carries none of the headers the Celery
        integration would add (``sentry-trace``, ``baggage``...): no worker reads them, since the workers run
        without that integration (tracing is OpenTelemetry's ``traceparent``)."""
        queue = f"sentry-headers-{token()}"
        try:
            promo_tasks.sync_promo.apply_async((1, None), queue=queue)
            [message] = broker.messages(queue)
        finally:
            broker.delete(queue)
        assert message["headers"]["task"] == promo_tasks.sync_promo.name
        assert not {"sentry-trace", "baggage", "sentry-task-enqueued-time", "headers"} & set(message["headers"])


class TestReportDeadLetter:
    def test_one_error_event_tagged_grouped_and_traced(self, sentry_on):
        """A dead letter becomes one error event: the exception's type and message, the failed run's
        frames, tags task/queue/reason/dead_letter_id/exception_type, the dead letter's fingerprint and the
        producer's trace id."""
        f = failure()
        sentry.report_dead_letter(f, 42)

        (event,) = reported(sentry_on)
        assert event["level"] == "error"
        assert event["environment"] == "test"
        (exception,) = event["exception"]["values"]
        assert (exception["type"], exception["module"], exception["value"]) == (
            "PermanentError", "observability.errors", "promo 7 has no product",
        )  # fmt: skip
        frames = exception["stacktrace"]["frames"]
        assert [(fr["function"], fr["lineno"], fr["in_app"]) for fr in frames] == [
            ("trace_task", 453, False), ("inner", 81, False), ("promos_sync_state", 42, True),
        ]  # fmt: skip
        assert frames[2]["context_line"] == 'raise PermanentError(f"promo {promo_id} has no product")'
        assert event["tags"]["role"] == "test"
        assert {k: event["tags"][k] for k in ("task", "queue", "reason", "dead_letter_id", "exception_type")} == {
            "task": "promotions.tasks.sync_promo",
            "queue": "celery",
            "reason": "non_retryable_error",
            "dead_letter_id": "42",
            "exception_type": "observability.errors.PermanentError",
        }
        assert event["fingerprint"] == ["dead-letter", f.fingerprint]
        assert event["contexts"]["trace"]["trace_id"] == TRACE_ID
        assert event["contexts"]["dead_letter"]["task_id"] == f.task_id

    def test_arguments_headers_and_raw_message_never_leave_the_process(self, sentry_on):
        """Args, kwargs, headers (``argsrepr``) and the raw message appear nowhere in what is sent."""
        sentry.report_dead_letter(failure(), 42)

        assert len(reported(sentry_on)) == 1
        assert SECRET.encode() not in sentry_on.raw()

    def test_a_deferred_record_without_trace_context(self, sentry_on):
        """Postgres down (no id yet): tagged ``deferred``. No traceparent: each event gets a trace id of its
        own, not the one the worker's main process happens to hold."""
        sentry.report_dead_letter(failure(headers={}), None)
        sentry.report_dead_letter(failure(headers={}), None)

        first, second = reported(sentry_on)
        assert first["tags"]["dead_letter_id"] == "deferred"
        trace_ids = {first["contexts"]["trace"]["trace_id"], second["contexts"]["trace"]["trace_id"]}
        assert len(trace_ids) == 2
        assert all(len(t) == 32 for t in trace_ids)

    def test_a_message_that_failed_without_exception(self, sentry_on):
        """A poison message has no exception: the event is titled by its reason, without frames."""
        sentry.report_dead_letter(failure(reason="poison_message", exception_type="", exception_message="",
                                          traceback=""), 3)  # fmt: skip

        (event,) = reported(sentry_on)
        (exception,) = event["exception"]["values"]
        assert (exception["type"], exception["value"]) == ("DeadLetter", "poison_message")
        assert "stacktrace" not in exception
        assert "exception_type" not in event["tags"]

    def test_breadcrumbs_of_other_messages_stay_out_and_nothing_leaks_to_later_events(self, sentry_on):
        """The report leaves out the main process's breadcrumbs (other messages'), and its tags stay off
        the events that follow."""
        sentry_sdk.add_breadcrumb(message="received another message", category="celery")
        sentry.report_dead_letter(failure(), 42)
        sentry_sdk.capture_message("later", level="error")

        dead_letter_event, later = reported(sentry_on)
        assert not dead_letter_event.get("breadcrumbs", {}).get("values")
        assert later["breadcrumbs"]["values"][-1]["message"] == "received another message"
        assert "dead_letter_id" not in later.get("tags", {})

    def test_never_raises(self, sentry_on, monkeypatch, caplog):
        """A failure to report is logged; the caller (about to acknowledge a message) carries on."""

        def broken(*args, **kwargs):
            raise RuntimeError("transport exploded")

        monkeypatch.setattr(sentry_sdk, "capture_event", broken)
        sentry.report_dead_letter(failure(), 42)
        assert "sentry.report_failed" in caplog.text


class TestBeforeSend:
    def test_the_celery_integrations_capture_inside_a_run_is_dropped(self, sentry_on):
        """An exception captured the way the Celery integration does it (mechanism ``celery``) is not
        sent: final failures are reported from their dead letter, and retries not at all."""
        try:
            raise ValueError("inside a task run")
        except ValueError:
            event, hint = event_from_exception(
                sys.exc_info(), client_options=sentry_sdk.get_client().options,
                mechanism={"type": "celery", "handled": False},
            )  # fmt: skip
        sentry_sdk.capture_event(event, hint=hint)
        sentry_sdk.capture_message("marker", level="error")

        assert [e.get("message") or e["logentry"]["message"] for e in reported(sentry_on)] == ["marker"]
        assert discarded_by_before_send(sentry_on) == 1

    def test_other_errors_are_sent_with_arguments_and_redacted_keys_scrubbed(self, sentry_on):
        """Any other error is sent, but task arguments (``celery-job`` extra, ``argsrepr``), keys of
        ``LOG_REDACT_KEYS`` (extra or contexts) and local variables are not."""
        assert "email" in settings.LOG_REDACT_KEYS

        def fail(recipient: str) -> None:
            copy = recipient  # a local variable holding an argument
            raise ValueError(f"no product ({len(copy)})")

        with sentry_sdk.isolation_scope() as scope:
            scope.set_extra("celery-job", {"task_name": "tests.echo", "args": [SECRET], "kwargs": {"x": SECRET}})
            scope.set_context("message", {"argsrepr": repr([SECRET]), "email": SECRET, "promo_id": 7})
            try:
                fail(SECRET)
            except ValueError:
                sentry_sdk.capture_exception()

        (event,) = reported(sentry_on)
        assert event["extra"]["celery-job"] == {"task_name": "tests.echo", "args": "[Filtered]",
                                                "kwargs": "[Filtered]"}  # fmt: skip
        assert event["contexts"]["message"] == {"argsrepr": "[Filtered]", "email": "[Filtered]", "promo_id": 7}
        assert all("vars" not in frame for frame in event["exception"]["values"][0]["stacktrace"]["frames"])
        assert SECRET.encode() not in sentry_on.raw()


class TestMonitors:
    def test_every_beat_entry_has_a_monitor(self):
        """Every beat entry has limits, and every limit belongs to an entry."""
        assert set(sentry.MONITORS) == set(settings.CELERY_BEAT_SCHEDULE)

    @pytest.mark.parametrize(
        ("entry", "schedule"),
        [
            ("check-flash-promos-every-minute", {"type": "interval", "value": 1, "unit": "minute"}),
            (HOURLY, {"type": "interval", "value": 1, "unit": "hour"}),
            # Sentry's finest unit is the minute: a 30 s entry is monitored as at least one run a minute.
            ("process-notification-queue-every-30s", {"type": "interval", "value": 1, "unit": "minute"}),
            ("purge-expired-dead-letters-daily", {"type": "interval", "value": 1, "unit": "day"}),
        ],
    )
    def test_the_schedule_is_the_entry_interval_in_sentry_units(self, entry, schedule):
        """Each monitor states its schedule, margin, max runtime and timezone explicitly."""
        limits = sentry.MONITORS[entry]
        assert sentry.monitor_config(entry) == {
            "schedule": schedule,
            "checkin_margin": limits.checkin_margin,
            "max_runtime": limits.max_runtime,
            "failure_issue_threshold": sentry_crons.FAILURE_ISSUE_THRESHOLD,
            "timezone": "UTC",
        }

    @pytest.mark.parametrize("entry", sorted(settings.CELERY_BEAT_SCHEDULE))
    def test_limits_cover_message_expiry_and_the_hard_time_limit(self, entry):
        """A margin covers the message's ``expires`` plus a minute (a run may start that late; later it
        never runs); a max runtime exceeds the task's hard time limit (a killed run never checks in)."""
        limits = sentry.MONITORS[entry]
        schedule = settings.CELERY_BEAT_SCHEDULE[entry]
        celery_app.loader.import_default_modules()
        time_limit = celery_app.tasks[schedule["task"]].time_limit

        assert limits.checkin_margin >= math.ceil(schedule["options"]["expires"] / 60) + 1
        assert time_limit is not None
        assert limits.max_runtime * 60 > time_limit

    def test_a_run_checks_in_in_progress_then_ok(self, sentry_on):
        """in_progress before the block, ok after, one check-in id, the monitor's configuration attached."""
        with sentry.monitor_periodic_run(HOURLY):
            pass

        sentry_sdk.flush()
        started, finished = sentry_on.payloads("check_in")
        assert (started["status"], finished["status"]) == ("in_progress", "ok")
        assert started["monitor_slug"] == finished["monitor_slug"] == HOURLY
        assert started["check_in_id"] == finished["check_in_id"]
        assert started["monitor_config"] == sentry.monitor_config(HOURLY)
        assert finished["duration"] >= 0
        assert started["environment"] == "test"

    def test_a_raising_run_checks_in_error_and_the_exception_goes_on(self, sentry_on):
        """A block that raises checks in ``error``; the exception reaches the caller unchanged."""
        with pytest.raises(ValueError, match="sweep failed"), sentry.monitor_periodic_run(HOURLY):
            raise ValueError("sweep failed")

        sentry_sdk.flush()
        assert [c["status"] for c in sentry_on.payloads("check_in")] == ["in_progress", "error"]

    def test_an_unknown_entry_runs_without_check_ins(self, sentry_on):
        """An entry this code base does not schedule: the run goes on, unmonitored."""
        ran = []
        with sentry.monitor_periodic_run("no-such-entry"):
            ran.append(True)

        sentry_sdk.flush()
        assert ran == [True]
        assert sentry_on.payloads("check_in") == []


@pytest.mark.django_db(transaction=True)
class TestWorkers:
    """Real worker processes with ``SENTRY_DSN`` set, consuming their own queue."""

    @pytest.fixture
    def sentry_worker(self, start_worker, receiver: SentryReceiver) -> Iterator[WorkerProcess]:
        worker = start_worker("-Q", QUEUE, env={"SENTRY_DSN": receiver.dsn, "SENTRY_ENVIRONMENT": "test"})
        with stopped_after(worker):
            yield worker

    def test_a_final_failure_is_one_event_from_its_dead_letter(self, sentry_worker, receiver):
        """A permanent failure: exactly one error event, tagged with task, queue, reason and the dead
        letter's id, grouped by its fingerprint, carrying the message's trace id - and not the task's
        argument. Nothing is captured in the pool child (the worker runs without the Celery integration)."""
        t = token()
        result = tasks.permanent.apply_async((t,), queue=QUEUE, headers={"traceparent": TRACEPARENT})
        entry = wait_for(lambda: DeadLetter.objects.filter(task_id=result.id).first(), what="the dead letter")
        receiver.wait_for("event", lambda e: e.get("tags", {}).get("celery_task_id") == result.id)
        sentry_worker.stop()  # every process of the worker flushes as it exits: all it would send has arrived

        (event,) = receiver.payloads("event")
        assert event["tags"]["task"] == "tests.permanent"
        assert event["tags"]["queue"] == QUEUE
        assert event["tags"]["reason"] == "non_retryable_error"
        assert event["tags"]["dead_letter_id"] == str(entry.pk)
        assert event["tags"]["role"] == "worker"
        assert event["fingerprint"] == ["dead-letter", entry.fingerprint]
        assert event["contexts"]["trace"]["trace_id"] == TRACE_ID
        (exception,) = event["exception"]["values"]
        assert (exception["type"], exception["value"]) == ("PermanentError", "this input can never work")
        assert exception["stacktrace"]["frames"][-1]["function"] == "permanent"  # the run's own traceback
        assert t.encode() not in receiver.raw()
        assert discarded_by_before_send(receiver) == 0  # the worker's Celery integration is off: no capture

    def test_a_run_killed_at_its_hard_time_limit_is_reported(self, sentry_worker, receiver):
        """The child is killed, so nothing in it can report: the event comes from the dead letter the
        worker's main process records."""
        result = tasks.sleeper.apply_async((token(), 30), queue=QUEUE)

        (event,) = receiver.wait_for("event", lambda e: e.get("tags", {}).get("celery_task_id") == result.id)
        assert (event["tags"]["task"], event["tags"]["reason"]) == ("tests.sleeper", "time_limit_exceeded")
        assert event["exception"]["values"][0]["type"] == "TimeLimitExceeded"

    def test_retries_are_not_reported(self, sentry_worker, receiver):
        """A task failing transiently twice, then succeeding: no error event, nothing even captured. (A
        permanent failure after it shows the worker does report.)"""
        assert tasks.flaky.apply_async((token(), 2), queue=QUEUE).get(timeout=RESULT_TIMEOUT) == 3
        failed = tasks.permanent.apply_async((token(),), queue=QUEUE)
        receiver.wait_for("event", lambda e: e.get("tags", {}).get("celery_task_id") == failed.id)
        sentry_worker.stop()

        assert [e["tags"]["task"] for e in receiver.payloads("event")] == ["tests.permanent"]
        assert discarded_by_before_send(receiver) == 0  # nothing captured in the child, retries or not

    def test_a_periodic_run_checks_in(self, sentry_worker, receiver):
        """A run published by beat (header ``x-schedule-entry``) checks in in_progress then ok, with the
        entry's schedule, margin and max runtime."""
        promo_tasks.cleanup_expired_promos.apply_async(queue=QUEUE, headers={"x-schedule-entry": HOURLY}).get(
            timeout=RESULT_TIMEOUT
        )

        receiver.wait_for("check_in", lambda c: c["status"] == "ok")
        started, finished = receiver.payloads("check_in")
        assert (started["status"], finished["status"]) == ("in_progress", "ok")
        assert started["monitor_slug"] == HOURLY
        assert started["check_in_id"] == finished["check_in_id"]
        config = started["monitor_config"]
        assert config["schedule"] == {"type": "interval", "value": 1, "unit": "hour"}
        assert (config["checkin_margin"], config["max_runtime"]) == (
            sentry.MONITORS[HOURLY].checkin_margin, sentry.MONITORS[HOURLY].max_runtime,
        )  # fmt: skip

    def test_a_failing_periodic_run_checks_in_error(self, sentry_worker, receiver):
        """A beat-published run that fails for good: in_progress then error, and its dead-letter event."""
        failed = tasks.permanent.apply_async((token(),), queue=QUEUE, headers={"x-schedule-entry": HOURLY})

        receiver.wait_for("check_in", lambda c: c["status"] == "error")
        receiver.wait_for("event", lambda e: e.get("tags", {}).get("celery_task_id") == failed.id)
        assert [c["status"] for c in receiver.payloads("check_in")] == ["in_progress", "error"]


def test_an_events_strings_have_url_passwords_masked():
    """An error report naming a URL with its password (an exception message, a breadcrumb, an extra) carries it
    masked, wherever the string stands; the event keeps its shape."""
    from observability.sentry.setup import _before_send

    event = {
        "exception": {"values": [{"type": "ConnectionError", "value": "no route to redis://:hunter2@cache:6379/0"}]},
        "breadcrumbs": {"values": [{"message": "connect postgres://app:pw@db/x"}]},
        "extra": {"urls": ["https://key@sentry.example/1"]},
    }

    scrubbed = _before_send(event, {}, denylist=frozenset())

    assert scrubbed is not None
    assert scrubbed["exception"]["values"][0]["value"] == "no route to redis://:********@cache:6379/0"
    assert scrubbed["breadcrumbs"]["values"][0]["message"] == "connect postgres://app:********@db/x"
    assert scrubbed["extra"]["urls"] == ["https://********@sentry.example/1"]
