"""One redis-py client per process for each Redis the project talks to outside kombu: the broker's
(``broker_redis``: the queues' lengths and ages) and the app's own state's (``state_redis``, ``REDIS_URL``:
singleton locks, beat's last successes, the lost-run counter, the rate limiter), which default to one Redis.

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

__all__ = ["broker_redis", "state_redis"]

_clients: dict[tuple[int, str], redis.Redis] = {}


def broker_redis() -> redis.Redis:
    """The broker's Redis (``CELERY_BROKER_URL``): what only the broker holds - its queues."""
    return _client(current_app.conf.broker_url)


def state_redis() -> redis.Redis:
    """The Redis of the app's own state (``REDIS_URL``; by default the broker's)."""
    return _client(settings.REDIS_URL)


def _client(url: str) -> redis.Redis:
    pid = os.getpid()
    client = _clients.get((pid, url))
    if client is None:
        if any(key_pid != pid for key_pid, _ in _clients):
            _clients.clear()  # a fork's inherited clients: their pools belong to the parent
        options = settings.REDIS_CONNECTION_OPTIONS
        client = _clients[pid, url] = redis.Redis.from_url(
            url,
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
