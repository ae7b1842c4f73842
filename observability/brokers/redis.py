"""Redis as the broker: kombu keeps each queue as lists (one per priority step) and hands a message back once it
has been unacknowledged for the visibility timeout - so every time limit, retry backoff and countdown must stay
below that timeout, or the task runs twice."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from observability.brokers import QueueAge, QueueDepth, time_limits
from observability.redis_client import broker_redis
from observability.telemetry import PUBLISHED_AT_HEADER

__all__ = ["Redis"]

#: kombu's Redis transport keeps priorities 0-9 in four lists: the queue itself and three suffixed ones.
_PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEPARATOR = "\x06\x16"


def _lists(queues: Sequence[str]) -> list[tuple[str, int, str]]:
    """(queue, priority step, Redis key) of every list of ``queues``."""
    return [
        (queue, step, queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}")
        for queue in queues
        for step in _PRIORITY_STEPS
    ]


def _published_at(envelope: bytes | str | None) -> float | None:
    """The publish time in a kombu envelope's headers; None for an empty list or a message without one."""
    if envelope is None:
        return None
    try:
        headers = json.loads(envelope).get("headers") or {}
        return float(headers[PUBLISHED_AT_HEADER])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # not a message of this project's producers; the transport dead-letters what is malformed


class Redis:
    name = "redis"

    def backlog(self, queues: Sequence[str]) -> list[QueueDepth] | None:
        lists = _lists(queues)
        try:
            pipe = broker_redis().pipeline(transaction=False)
            for _, _, key in lists:
                pipe.llen(key)
            lengths = pipe.execute()
        except RedisError:
            return None
        return [QueueDepth(queue, str(step), int(n)) for (queue, step, _), n in zip(lists, lengths, strict=True)]

    def oldest_message_ages(self, queues: Sequence[str]) -> list[QueueAge] | None:
        # kombu LPUSHes and BRPOP takes from the tail: a list's oldest message is its last element.
        lists = _lists(queues)
        try:
            pipe = broker_redis().pipeline(transaction=False)
            for _, _, key in lists:
                pipe.lindex(key, -1)
            tails = pipe.execute()
        except RedisError:
            return None
        now = time.time()
        ages = []
        for (queue, step, _), tail in zip(lists, tails, strict=True):
            published_at = _published_at(tail)
            ages.append(QueueAge(queue, str(step), 0.0 if published_at is None else max(now - published_at, 0.0)))
        return ages

    def startup_problems(self, app: Any) -> list[str]:
        """Checked for every registered task: the hard time limit (required, and below the timeout) and the
        longest retry countdown plus that limit."""
        limit = settings.CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS
        problems = []
        if limit <= settings.PROMO_TRANSITION_HORIZON_SECONDS:
            problems.append(f"PROMO_TRANSITION_HORIZON_SECONDS reaches the visibility timeout ({limit} s)")
        for name, task, time_limit in time_limits(app):
            if time_limit is None:
                problems.append(f"{name}: no hard time limit; set time_limit below the visibility timeout ({limit} s)")
            elif time_limit >= limit:
                problems.append(f"{name}: time_limit {time_limit} s reaches the visibility timeout ({limit} s)")
            # A retry waits unacknowledged in the worker for its countdown, then runs: both must fit.
            backoff_cap = getattr(task, "retry_backoff_max_seconds", 0)
            if time_limit is not None and backoff_cap + time_limit >= limit:
                problems.append(
                    f"{name}: retry backoff up to {backoff_cap} s plus time_limit {time_limit} s reaches the "
                    f"visibility timeout ({limit} s)"
                )
        return [f"{problem} (CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS)" for problem in problems]

    def countdown_problem(self, task_name: str, delay_seconds: float, time_limit_seconds: float) -> str | None:
        # Redis hands a message back once it has been unacknowledged for the visibility timeout, and the clock
        # starts at delivery: the wait for the ETA plus the run must fit, or the task runs twice.
        limit = settings.CELERY_BROKER_VISIBILITY_TIMEOUT_SECONDS
        if delay_seconds + time_limit_seconds < limit:
            return None
        return (
            f"{task_name}: a countdown/ETA of {delay_seconds:.0f} s plus its {time_limit_seconds:.0f} s time limit "
            f"reaches the broker visibility timeout ({limit} s) and would run twice; schedule it from the database"
        )

    def countdown(self, delay_seconds: float) -> float:
        return delay_seconds  # the worker holds it until its ETA, to the millisecond
