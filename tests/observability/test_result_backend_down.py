"""A result backend that is down costs a run nothing but its stored result: a task that succeeded is a success
(never a dead letter a replay would run again), one that failed is dead-lettered with its own error, and each
state the backend did not take is one warning line with the task id and the backend's error, and a count.

A real worker whose ``CELERY_RESULT_BACKEND`` is a closed port on 127.0.0.1, its broker the test Redis.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from observability.deadletters.models import DeadLetter
from tests import tasks
from tests.conftest import WorkerProcess, wait_for
from tests.net import free_port

pytestmark = [pytest.mark.django_db(transaction=True)]

QUEUE = "results-down"


@pytest.fixture(scope="module")
def backendless_worker(start_module_worker, otlp):
    """A worker whose result backend refuses every connection; JSON logs, metrics every 300 ms."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    return start_module_worker(
        "-Q", QUEUE,
        env={"CELERY_RESULT_BACKEND": closed, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
             "OTEL_METRIC_EXPORT_INTERVAL": "300", "LOG_FORMAT": "json"},
    )  # fmt: skip


def _lines(worker: WorkerProcess, event: str, task_id: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in worker.log().splitlines()
        if f'"{event}"' in line and task_id in line and line.startswith("{")
    ]


def test_a_success_whose_result_cannot_be_stored_stays_a_success(backendless_worker, otlp):
    """The task runs once and finishes ``succeeded``; no dead letter; one ``task.result_unstored`` warning names
    the task id and the backend's error; ``celery.task.results_unstored`` counts it with state SUCCESS. It took
    no 20 s of backend retries."""
    t = uuid.uuid4().hex
    started = time.monotonic()
    result = tasks.echo.apply_async((t,), queue=QUEUE)

    (line,) = wait_for(lambda: _lines(backendless_worker, "task.result_unstored", result.id), what="the warning")
    # Celery's default retry policy for the backend waited 20 s (20 retries a second apart) before this line.
    assert time.monotonic() - started < 18
    assert line["level"] == "warning"
    assert (line["task_name"], line["state"]) == ("tests.echo", "SUCCESS")
    assert line["error"].startswith("ConnectionError: ") and "127.0.0.1" in line["error"]
    assert len(tasks.runs(t)) == 1
    wait_for(
        lambda: otlp.total("celery.task.results_unstored", task="tests.echo", state="SUCCESS") >= 1,
        what="the unstored-result counter",
    )
    wait_for(
        lambda: otlp.total("celery.tasks.finished", task="tests.echo", outcome="succeeded") >= 1,
        what="the run counted as a success",
    )
    assert not DeadLetter.objects.filter(task_id=result.id).exists()
    assert not DeadLetter.objects.filter(exception_type__startswith="redis.").exists()


def test_a_failure_whose_state_cannot_be_stored_is_dead_lettered_with_its_own_error(backendless_worker):
    """A permanent failure is still one dead letter, of its own exception (not of the backend's), and its
    unstored FAILURE state is logged."""
    result = tasks.permanent.apply_async((uuid.uuid4().hex,), queue=QUEUE)

    entry = wait_for(lambda: DeadLetter.objects.filter(task_id=result.id).first(), what="the dead letter")
    assert entry.reason == "non_retryable_error"
    assert entry.exception_type == "observability.errors.PermanentError"
    wait_for(lambda: _lines(backendless_worker, "task.result_unstored", result.id), what="the warning")
    assert [line["state"] for line in _lines(backendless_worker, "task.result_unstored", result.id)] == ["FAILURE"]
