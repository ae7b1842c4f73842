"""``ObservableCelery``: the app class (``marketplace.celery``) through whose ``send_task`` every task publish goes -
``delay``/``apply_async`` in web requests, beat's ticks, sub-tasks and retries published by tasks, ``dlq replay``
- so each gets its PRODUCER span, its duration and its count, failures included, exactly once.

``before_task_publish`` alone cannot do it: a publish that raises (the broker down) never reaches
``after_task_publish``, and its span would never end.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.result import AsyncResult

from observability import telemetry

__all__ = ["ObservableCelery"]


class ObservableCelery(Celery):
    def send_task(self, name: str, *args: Any, **options: Any) -> AsyncResult[Any]:
        """``Celery.send_task`` inside the publish's span (``observability.telemetry.publishes``)."""
        publish = telemetry.publish_started(name)
        try:
            result = super().send_task(name, *args, **options)
        except BaseException as exc:
            telemetry.publish_finished(publish, exc, queue=publish.queue or self._destination(name, options))
            raise
        telemetry.publish_finished(publish)
        return result

    def _destination(self, name: str, options: dict[str, Any]) -> str:
        """The queue of a publish that failed before Celery routed it: the one asked for, else the route's."""
        queue = options.get("queue")
        if queue is not None:
            return queue if isinstance(queue, str) else str(queue.name)
        try:
            return str(self.amqp.router.route({}, name)["queue"].name)
        except (KeyError, AttributeError, LookupError):
            return str(self.conf.task_default_queue)
