"""One redis-py client per process for the broker's Redis (delivery counters, singleton locks).

Created lazily and re-created after a fork: a connection pool must never be shared by a parent and its
prefork children. Its connections take the broker's timeouts, keepalive and health checks
(``settings.REDIS_CONNECTION_OPTIONS``): the worker's main process calls it from its event loop, where a
command waiting forever on a dropped flow would stop the worker.
"""

from __future__ import annotations

import os

import redis
from celery import current_app
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["broker_redis"]

_clients: dict[int, redis.Redis] = {}


def broker_redis() -> redis.Redis:
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        _clients.clear()
        options = settings.REDIS_CONNECTION_OPTIONS
        client = _clients[pid] = redis.Redis.from_url(
            current_app.conf.broker_url,
            socket_timeout=options["socket_timeout"],
            socket_connect_timeout=options["socket_connect_timeout"],
            socket_keepalive=options["socket_keepalive"],
            socket_keepalive_options=options["socket_keepalive_options"],
            health_check_interval=options["health_check_interval"],
            # One immediate retry on a new connection, as the broker's: redis-py 6's default (3 retries with up
            # to 10 s of backoff) could hold the worker's event loop half a minute on a dropped flow.
            retry=Retry(NoBackoff(), 1),
        )
    return client
