"""What one huge failure may cost: its traceback in the dead letter, its log lines and its stored failure result
are capped (issue 21's probe: a 20 MB argument wrote a 63 MB log line, a 42 MB traceback into the dead letter
and a 63 MB failure result kept a day in Redis). Real worker, real Redis, real Postgres."""

from __future__ import annotations

import json
import uuid

import pytest
from celery.result import AsyncResult

from observability.errors import PermanentError
from observability.failure import MAX_TRACEBACK_CHARS, Failure
from observability.logs.setup import MAX_FIELD_CHARS
from observability.results import MAX_STORED_TEXT_CHARS
from tests import tasks
from tests.conftest import RESULT_TIMEOUT, wait_for

#: Well over every cap, well under the message limit (1 MiB).
SIZE = 400_000


def test_a_failures_traceback_keeps_its_head_and_tail_within_the_cap():
    """A traceback over the cap keeps its first frames and its last lines (the raising frame, the message)."""
    traceback = "Traceback (most recent call last):\n" + "y" * 1_000_000 + "\nPermanentError: the end"

    stored = Failure(reason="non_retryable_error", traceback=traceback).traceback

    assert len(stored) < MAX_TRACEBACK_CHARS + 100
    assert stored.startswith("Traceback (most recent call last):\n")
    assert stored.endswith("\nPermanentError: the end")
    assert "characters cut]" in stored


@pytest.mark.django_db(transaction=True)
def test_a_huge_failure_is_capped_in_its_dead_letter_its_log_lines_and_its_result(celery_worker):
    """Given a task failing with a 400 KB message, then its dead letter's traceback, every line the worker
    logged and the failure result stored in Redis stay within their caps; the result still raises the task's
    exception type."""
    from observability.deadletters.models import DeadLetter

    t = uuid.uuid4().hex
    result = tasks.permanent_verbose.delay(t, SIZE)
    entry = wait_for(lambda: DeadLetter.objects.filter(task_id=result.id).first(), what="the dead letter")

    assert len(entry.traceback) <= MAX_TRACEBACK_CHARS + 100
    assert len(entry.exception_message) <= 10_000
    with pytest.raises(PermanentError) as raised:
        AsyncResult(result.id).get(timeout=RESULT_TIMEOUT)
    assert len(str(raised.value)) <= MAX_STORED_TEXT_CHARS + 100
    assert str(raised.value).startswith(t)
    stored = result.backend.client.get(result.backend.get_key_for_task(result.id))
    assert len(stored) < 3 * MAX_STORED_TEXT_CHARS  # the exception's message and the traceback, each capped
    assert json.loads(stored)["status"] == "FAILURE"
    wait_for(lambda: t in celery_worker.log(), what="the worker's lines about the failure")
    lines = [line for line in celery_worker.log().splitlines() if t in line]
    assert lines and max(len(line) for line in lines) < 2 * MAX_FIELD_CHARS
