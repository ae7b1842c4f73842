"""Every publish is a PRODUCER span, from real processes to a local OTLP receiver: the run it publishes is its
CONSUMER child in the same trace - for a retry and a sub-task published by a run, a dead letter replayed by
``manage.py dlq replay``, a task published by beat - and a publish the broker refuses ends its span in error and
is counted failed with its error type. (The web request's publish: ``test_worker_telemetry``.)"""

from __future__ import annotations

import subprocess
import sys
import uuid
from urllib.parse import urlparse

import pytest
from django.utils import timezone

from observability.deadletters.models import DeadLetter
from tests import tasks
from tests.conftest import RESULT_TIMEOUT, ROOT, TEST_BROKER, TEST_BROKER_URL, one_queue, running_beat, wait_for
from tests.net import free_port
from tests.otlp_receiver import OtlpReceiver, Span

pytestmark = [pytest.mark.django_db(transaction=True)]

INTERNAL, PRODUCER, CONSUMER = 1, 4, 5  # opentelemetry.proto.trace.v1.Span.SpanKind values
STATUS_ERROR = 2
QUEUE = "produced"


def traceparent() -> tuple[str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, f"00-{trace_id}-{span_id}-01"


def traced(otlp: OtlpReceiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture(scope="module")
def worker(start_module_worker, otlp):
    """A prefork worker on its own queue exporting to the receiver; metrics every 300 ms."""
    return start_module_worker("-Q", QUEUE, env={**traced(otlp), "OTEL_METRIC_EXPORT_INTERVAL": "300"})


def spans_of(otlp: OtlpReceiver, kind: int, task: str, trace_id: str | None = None) -> list[Span]:
    return [
        s
        for s in list(otlp.spans)
        if s.kind == kind and s.attributes.get("celery.task_name") == task and trace_id in (None, s.trace_id)
    ]


def parent_of(otlp: OtlpReceiver, span: Span) -> Span | None:
    return next((s for s in list(otlp.spans) if s.span_id == span.parent_span_id), None)


def producer_parent(otlp: OtlpReceiver, run: Span) -> Span:
    """The PRODUCER span a run's span is the child of (waited for: the producer exports on its own schedule)."""
    parent: Span = wait_for(lambda: parent_of(otlp, run), what=f"the parent of the run {run.span_id}")
    return parent


def test_a_retry_is_a_producer_span_child_of_the_failed_run_and_parent_of_the_next(worker, otlp):
    """The retry a run publishes is a ``send produced`` span inside that run; the retried run is its child. Both
    spans carry the messaging attributes of the current conventions."""
    trace_id, parent = traceparent()
    tasks.flaky.apply_async((uuid.uuid4().hex, 1), queue=QUEUE, headers={"traceparent": parent}).get(
        timeout=RESULT_TIMEOUT
    )
    runs = wait_for(
        lambda: len(spans_of(otlp, CONSUMER, "tests.flaky", trace_id)) == 2 and spans_of(otlp, CONSUMER, "tests.flaky"),
        what="both runs of the flaky task",
    )
    runs = spans_of(otlp, CONSUMER, "tests.flaky", trace_id)
    first, second = sorted(runs, key=lambda s: s.attributes["celery.retries"])
    retry = producer_parent(otlp, second)
    assert retry.kind == PRODUCER and retry.parent_span_id == first.span_id and retry.trace_id == trace_id
    assert retry.name == f"send {QUEUE}" and first.name == f"run {QUEUE}"
    assert retry.resource["service.name"] == "marketplace-worker"
    assert retry.attributes["messaging.operation.type"] == "send"
    assert retry.attributes["messaging.operation.name"] == "send"
    assert retry.attributes["messaging.destination.name"] == QUEUE
    assert retry.attributes["messaging.message.id"] == second.attributes["messaging.message.id"]
    assert retry.attributes["celery.task_name"] == "tests.flaky"
    for span in (retry, first):
        # RabbitMQ's well-known value; Redis has none.
        assert span.attributes["messaging.system"] == ("rabbitmq" if TEST_BROKER == "rabbitmq" else "celery")
        assert span.attributes["messaging.client.id"] == worker.name
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == urlparse(TEST_BROKER_URL).port
    assert "error.type" not in first.attributes  # a retried run is no failure of its message
    wait_for(
        lambda: otlp.total("celery.task.publish_duration", task="tests.flaky", queue=QUEUE, outcome="sent") >= 1,
        what="the worker child's publish-duration histogram",
    )


def test_a_sub_task_published_by_a_run_is_a_producer_span_inside_it(worker, otlp):
    """A run that publishes another task: the publish's span is the run's child, the sub-task's run its child."""
    trace_id, parent = traceparent()
    token = uuid.uuid4().hex
    tasks.publishes_echo.apply_async((token, QUEUE), queue=QUEUE, headers={"traceparent": parent}).get(
        timeout=RESULT_TIMEOUT
    )
    [outer] = wait_for(lambda: spans_of(otlp, CONSUMER, "tests.publishes_echo", trace_id), what="the outer run")
    [inner] = wait_for(lambda: spans_of(otlp, CONSUMER, "tests.echo", trace_id), what="the sub-task's run")
    send = producer_parent(otlp, inner)
    assert send.kind == PRODUCER and send.attributes["celery.task_name"] == "tests.echo"
    assert send.parent_span_id == outer.span_id


def test_a_replayed_dead_letters_publish_is_the_replayed_runs_parent(worker, otlp, worker_env):
    """``manage.py dlq replay`` publishes inside a span of its own (``marketplace-cli``): the replayed run is its
    child in a new trace, and still links to the failed run's trace."""
    trace_id, parent = traceparent()
    now = timezone.now()
    # A task the command's own process registers (it does not load the test tasks), with nothing to deliver.
    entry = DeadLetter.objects.create(
        dedup_key=uuid.uuid4().hex, task_id=uuid.uuid4().hex, task_name="promotions.tasks.deliver_notification_batch",
        reason="non_retryable_error", args=[], queue=QUEUE, routing_key=QUEUE, headers={"traceparent": parent},
        exception_type="observability.errors.PermanentError", fingerprint="f" * 16, first_failed_at=now,
        last_failed_at=now,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "manage.py", "dlq", "replay", str(entry.pk)],
        cwd=ROOT, env={**worker_env, **traced(otlp)}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "Published 1" in done.stdout, done.stdout + done.stderr
    [run] = wait_for(
        lambda: [
            s
            for s in spans_of(otlp, CONSUMER, "promotions.tasks.deliver_notification_batch")
            if any(t == trace_id for t, _ in s.links)
        ],
        what="the replayed run's span",
    )
    send = producer_parent(otlp, run)
    assert send.kind == PRODUCER and send.resource["service.name"] == "marketplace-cli"
    assert send.trace_id == run.trace_id != trace_id
    assert send.parent_span_id == ""  # the command's publish starts the replay's trace


def test_a_publish_the_broker_refuses_ends_its_span_in_error_and_counts_as_failed(worker_env, otlp):
    """With the broker's port closed, ``apply_async`` raises; its ``send`` span ends with ERROR status, the
    canonical ``error.type`` and the exception, and the publish counts as failed with its error type - not as
    published."""
    script = (
        "from kombu.exceptions import OperationalError\n"
        "from observability import telemetry\n"
        "from tests import tasks\n"
        "telemetry.setup('cli')\n"
        "try:\n"
        "    tasks.echo.apply_async(('refused',), queue='nowhere', ignore_result=True)\n"
        "except OperationalError as exc:\n"
        "    print('publish failed:', type(exc).__name__)\n"
        "finally:\n"
        "    telemetry.shutdown()\n"
    )
    env = {**worker_env, **traced(otlp), "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "publish failed: OperationalError" in done.stdout, done.stderr
    [send] = wait_for(
        lambda: [s for s in spans_of(otlp, PRODUCER, "tests.echo") if s.resource["service.name"] == "marketplace-cli"],
        what="the failed publish's span",
    )
    assert send.name == "send nowhere" and send.status_code == STATUS_ERROR
    assert send.attributes["error.type"] == "kombu.exceptions.OperationalError"
    [(event, exception)] = send.events
    assert event == "exception" and exception["exception.type"] == "kombu.exceptions.OperationalError"
    assert send.attributes["server.port"] == int(env["CELERY_BROKER_URL"].rsplit(":", 1)[1].split("/")[0])
    wait_for(
        lambda: otlp.total("celery.tasks.publish_failed", task="tests.echo", error_type="OperationalError") == 1,
        what="the failed-publish counter",
    )
    assert otlp.total("celery.task.publish_duration", task="tests.echo", queue="nowhere", outcome="failed") == 1
    assert otlp.total("celery.tasks.published", task="tests.echo", queue="nowhere") == 0


def test_a_task_beat_publishes_runs_as_the_child_of_beats_producer_span(start_worker, worker_env, otlp, tmp_path):
    """Beat's publishes are PRODUCER spans of ``marketplace-beat``; each run's span is a child of one, and each
    publish the child of the INTERNAL span of the beat entry it sends, the root of the trace; beat counts the
    send in ``celery.beat.ticks``."""
    queue = f"beat-{uuid.uuid4().hex[:8]}"
    env = {**traced(otlp), **one_queue(queue), "OTEL_METRIC_EXPORT_INTERVAL": "300"}
    start_worker("-Q", queue, env=env)
    with running_beat({**worker_env, **env}, tmp_path):

        def run_with_beat_parent() -> tuple[Span, Span] | None:
            for run in [s for s in list(otlp.spans) if s.kind == CONSUMER]:
                send = parent_of(otlp, run)
                if send is not None and send.resource["service.name"] == "marketplace-beat":
                    return run, send
            return None

        run, send = wait_for(run_with_beat_parent, timeout=60, what="a run whose parent is beat's publish")
    assert send.kind == PRODUCER and send.name == f"send {queue}"
    assert send.attributes["celery.task_name"] == run.attributes["celery.task_name"]
    assert send.attributes["messaging.message.id"] == run.attributes["messaging.message.id"]
    tick = wait_for(lambda: parent_of(otlp, send), what="the beat entry's span, parent of the publish")
    entry = tick.attributes["celery.beat.entry"]
    assert tick.kind == INTERNAL and tick.name == f"beat {entry}" and tick.parent_span_id in ("", None)
    assert tick.resource["service.name"] == "marketplace-beat" and tick.trace_id == run.trace_id
    assert tick.attributes["celery.task.name"] == run.attributes["celery.task_name"]
    wait_for(lambda: otlp.total("celery.beat.ticks", entry=entry, outcome="sent") >= 1, what="beat's tick count")
