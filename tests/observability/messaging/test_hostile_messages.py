"""Messages written to the broker by someone else are contained: Celery's built-in tasks and oversized bodies
are dead-lettered, never run; a producer of the project cannot publish an oversized message at all. Real
worker processes, real Redis, real Postgres."""

from __future__ import annotations

import re
import uuid

import pytest

from marketplace.celery import app as celery_app
from observability.deadletters.models import DeadLetter
from observability.errors import MessageTooLargeError
from tests import tasks
from tests.conftest import RESULT_TIMEOUT, wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]

#: The workers' limit in these tests: small, so an oversized message stays cheap to build.
LIMIT = 4096


def token() -> str:
    return uuid.uuid4().hex


def _entry(**filters: object) -> DeadLetter:
    entry: DeadLetter = wait_for(lambda: DeadLetter.objects.filter(**filters).first(), what=f"a dead letter {filters}")
    return entry


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        # The probe's: with interval 0 it retried 861 times in 10 s until revoked.
        ("celery.chord_unlock", ["no-such-group", []], {"interval": 0, "max_retries": None}),
        ("celery.backend_cleanup", [], {}),
        ("celery.chain", [], {"tasks": []}),
    ],
)
def test_a_builtin_task_injected_into_a_queue_is_dead_lettered_not_run(start_worker, name, args, kwargs):
    """Given a Celery built-in task published straight to a worker's queue, then it becomes one
    ``builtin_task`` entry - recorded once, not retried - and the worker runs the next task as usual."""
    queue = f"builtin-{token()[:8]}"
    worker = start_worker("-Q", queue)
    injected = celery_app.send_task(name, args=args, kwargs=kwargs, queue=queue)

    entry = _entry(task_id=injected.id)
    assert (entry.reason, entry.task_name, entry.args, entry.kwargs) == ("builtin_task", name, args, kwargs)
    assert "Celery built-in task" in entry.exception_message
    assert tasks.echo.apply_async(("after",), queue=queue).get(timeout=RESULT_TIMEOUT) == "after"
    entry.refresh_from_db()
    assert entry.failure_count == 1
    assert f"Task {name}[{injected.id}] retry" not in worker.log()
    assert f"Task {name}[{injected.id}] succeeded" not in worker.log()


def test_an_oversized_message_from_elsewhere_is_dead_lettered_with_its_real_size(broker, start_worker):
    """Given a message over the workers' CELERY_TASK_MAX_MESSAGE_BYTES pushed into their queue (``send_task``,
    as any other producer would, skips the project's check), then it is dead-lettered as
    ``message_too_large`` unrun, its body stored truncated and its real size in the message."""
    t = token()
    queue = f"large-{t[:8]}"
    celery_app.send_task("tests.echo", args=[t + "x" * (2 * LIMIT)], queue=queue)
    (message,) = broker.messages(queue)
    size = message["body_size"]
    start_worker("-Q", queue, env={"CELERY_TASK_MAX_MESSAGE_BYTES": str(LIMIT)})

    entry = _entry(reason="message_too_large", queue=queue)
    assert re.search(rf"\b{size} bytes exceeds CELERY_TASK_MAX_MESSAGE_BYTES \({LIMIT}\)", entry.exception_message)
    assert entry.exception_type == "observability.errors.MessageTooLargeError"
    assert entry.task_name == "tests.echo"
    assert (entry.args, entry.kwargs) == ([], {})
    assert entry.raw_message.startswith(f'[["{t}xxx') and len(entry.raw_message) == 4096
    assert tasks.echo.apply_async(("after",), queue=queue).get(timeout=RESULT_TIMEOUT) == "after"
    assert tasks.runs(t + "x" * (2 * LIMIT)) == []


def test_an_oversized_publish_fails_at_the_producer_with_one_clear_error(settings, broker):
    """``delay`` of arguments over CELERY_TASK_MAX_MESSAGE_BYTES raises ``MessageTooLargeError`` naming the
    task, the size and the limit; nothing reaches the broker."""
    settings.CELERY_TASK_MAX_MESSAGE_BYTES = LIMIT
    queue = f"refused-{token()[:8]}"

    with pytest.raises(MessageTooLargeError, match=rf"^tests\.echo: .* over CELERY_TASK_MAX_MESSAGE_BYTES \({LIMIT}\)"):
        tasks.echo.apply_async(("x" * LIMIT,), queue=queue)

    assert broker.depth(queue) == 0
    tasks.echo.apply_async(("x" * (LIMIT // 2),), queue=queue)  # under the limit: published
    assert broker.depth(queue) == 1
    broker.delete(queue)
