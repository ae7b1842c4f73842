"""Owns reading the queue a delivery came from out of its ``delivery_info``, for every label, span and dead letter
that names it: the routing key - each queue is routed by its own name - less the prefix that RabbitMQ's native
delayed delivery puts before a countdown's routing key (28 binary digits, one per delay level, each followed by
a dot: kombu's ``calculate_routing_key``; ``tests/observability/test_delivery.py`` pins the two together).
Without it a countdown's run would be labelled, and its dead letter replayed, under a queue that does not exist,
a new one for every delay.

Imports nothing from the project: every room may use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["delivery_exchange", "delivery_queue", "routed_queue"]

_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


def routed_queue(routing_key: str) -> str:
    """The queue a routing key names: the key itself, without a delayed-delivery prefix."""
    return _DELAY_PREFIX.sub("", routing_key, count=1)


def delivery_queue(delivery_info: Mapping[str, Any] | None, default: str = "") -> str:
    """The queue a message was delivered from (its routing key without a delayed-delivery prefix), or ``default``
    when it has none."""
    routing_key = (delivery_info or {}).get("routing_key")
    if not routing_key:
        return default
    return routed_queue(str(routing_key)) or default


def delivery_exchange(delivery_info: Mapping[str, Any] | None) -> str:
    """The exchange a message was published to; "" for one that came through delayed delivery, whose last hop
    (``celery_delayed_*``) is no exchange to publish it to again - its queue routes it."""
    info = delivery_info or {}
    exchange, routing_key = str(info.get("exchange") or ""), str(info.get("routing_key") or "")
    if exchange.startswith("celery_delayed") or _DELAY_PREFIX.match(routing_key):
        return ""
    return exchange
