"""One redis-py client per process for the broker's Redis (delivery counters, singleton locks).

Created lazily and re-created after a fork: a connection pool must never be shared by a parent and its
prefork children.
"""

from __future__ import annotations

import os

import redis
from celery import current_app

__all__ = ["broker_redis"]

_clients: dict[int, redis.Redis] = {}


def broker_redis() -> redis.Redis:
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        _clients.clear()
        client = _clients[pid] = redis.Redis.from_url(
            current_app.conf.broker_url, socket_timeout=5, socket_connect_timeout=5
        )
    return client
