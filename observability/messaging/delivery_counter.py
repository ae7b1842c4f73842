"""How many times a message's run was lost with its worker process (SIGKILL, OOM, segfault), in Redis.

Redis does not count deliveries, so a message that kills its worker would be redelivered forever. The
worker's main process counts each lost run (``count_lost_run``, on ``WorkerLostError``); when such a
message comes back, the strategy reads the count (``lost_runs``) and quarantines it past the limit. Only
lost runs count - not the redeliveries that warm shutdowns and reconnections cause - and a first delivery
costs no round trip. Keys expire after ``DEAD_LETTER_DELIVERY_COUNTER_TTL_SECONDS``.
"""

from __future__ import annotations

import structlog
from django.conf import settings
from redis.exceptions import RedisError

from observability.redis_client import state_redis

__all__ = ["count_lost_run", "lost_runs"]

log = structlog.get_logger(__name__)

KEY_PREFIX = "observability:lost-runs:"


def count_lost_run(task_id: str) -> None:
    """Record that a run of ``task_id`` was lost with its process (never raises: counting is best effort)."""
    key = KEY_PREFIX + task_id
    try:
        pipe = state_redis().pipeline()
        pipe.incr(key)
        pipe.expire(key, settings.DEAD_LETTER_DELIVERY_COUNTER_TTL_SECONDS)
        pipe.execute()
    except RedisError as exc:
        log.warning("delivery_counter.unavailable", task_id=task_id, error=str(exc))


def lost_runs(task_id: str) -> int:
    """Runs of ``task_id`` lost so far. Raises ``RedisError`` when Redis does not answer."""
    value = state_redis().get(KEY_PREFIX + task_id)
    return int(value) if value else 0  # type: ignore[arg-type]
