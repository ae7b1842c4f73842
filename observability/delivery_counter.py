"""Delivery counts of redelivered messages, kept in the broker's Redis.

Redis does not count deliveries, so a message that kills its worker (SIGKILL, OOM, segfault) would be
redelivered forever. Only redelivered messages are counted - a first delivery costs no round trip - under
a key per task id that expires after ``DEAD_LETTER_DELIVERY_COUNTER_TTL_SECONDS``.
"""

from __future__ import annotations

from django.conf import settings

from observability.redis_client import broker_redis

__all__ = ["count_redelivery"]

KEY_PREFIX = "observability:deliveries:"


def count_redelivery(task_id: str) -> int:
    """Record one more redelivery of ``task_id``; return its deliveries so far, the first one included."""
    key = KEY_PREFIX + task_id
    pipe = broker_redis().pipeline()
    pipe.incr(key)
    pipe.expire(key, settings.DEAD_LETTER_DELIVERY_COUNTER_TTL_SECONDS)
    redeliveries, _ = pipe.execute()
    return int(redeliveries) + 1
