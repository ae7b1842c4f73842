"""Connection health: a broker or result-backend connection that stops silently (a NAT or load balancer
dropping the flow: no reset, no close) is noticed and replaced by itself, within bounds - a worker consumes
again, a publish fails over or fails clearly, a result read fails instead of hanging.

Each test routes one process's Redis traffic through ``tests.tcp_proxy.TcpProxy`` and freezes it.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from urllib.parse import urlsplit

import pytest
import redis
from kombu.transport import redis as kombu_redis

from observability.messaging import redis_transport
from tests import tasks
from tests.conftest import TEST_REDIS_URL, wait_for
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def proxy():
    target = TcpProxy(target_port=urlsplit(TEST_REDIS_URL).port or 6379)
    target.start()
    yield target
    target.cut()


def _through(proxy: TcpProxy) -> str:
    return urlsplit(TEST_REDIS_URL)._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()


def _blocked_behind(proxy: TcpProxy, redis_client: redis.Redis) -> bool:
    """Whether Redis still holds a BRPOP of a frozen connection: a message pushed meanwhile would be popped
    for a client that never gets it (kombu holds a message unacknowledged only once it has read it)."""
    ports = proxy.frozen_upstream_ports()
    clients = redis_client.client_list()
    return any(int(c["addr"].rsplit(":", 1)[1]) in ports and "b" in c["flags"] for c in clients)


@pytest.mark.django_db(transaction=True)
def test_a_worker_on_a_frozen_broker_connection_consumes_again_within_a_minute(proxy, start_worker, redis_client):
    """Given a worker whose broker and result backend go through a proxy, and a task it ran, when the proxy
    freezes every open connection (new ones still go through, as after a NAT dropped the flows), then a task
    published afterwards runs within 60 s, and the worker's log says once that it reconnected, and why -
    without restarting its consumer (which would cancel running tasks and requeue what it holds)."""
    url = _through(proxy)
    worker = start_worker(env={"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url})
    first = uuid.uuid4().hex
    tasks.echo.delay(first)
    wait_for(lambda: tasks.runs(first), what="the first task to run")

    proxy.freeze()
    frozen_at = time.monotonic()
    # The BRPOP in flight at the freeze ends on the server within its 1 s timeout; what it pops is lost with
    # the flow (a window no client setting closes). The task is published once Redis no longer serves it.
    wait_for(lambda: not _blocked_behind(proxy, redis_client), timeout=10, what="the frozen BRPOP to time out")
    second = uuid.uuid4().hex
    tasks.echo.delay(second)  # published by this process, straight to Redis

    wait_for(lambda: tasks.runs(second), timeout=60, what="the task published after the freeze to run")
    consumed_after = time.monotonic() - frozen_at
    assert consumed_after < 60
    events = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    (reconnected,) = [e for e in events if e["event"] == "broker.reconnected"]
    assert reconnected["connection"] == "consumer (BRPOP)"
    assert reconnected["reason"].startswith("no reply to BRPOP in ")
    assert reconnected["level"] == "warning"
    assert not [e for e in events if "dropping stale connection" in e["event"] and "BRPOP" in e["event"]]
    assert "Connection to broker lost" not in worker.log()
    print(f"consumed again {consumed_after:.1f} s after the freeze; {reconnected}")


def test_kombu_still_drops_a_stale_brpop_connection_as_this_transport_expects():
    """The kombu internals ``redis_transport`` relies on: the poller's BRPOP check, the line it logs, the
    channel attributes it reads and the poller the transport replaces."""
    check = inspect.getsource(kombu_redis.MultiChannelPoller.maybe_check_brpop_health)
    assert repr(redis_transport.STALE_BRPOP_LINE)[1:-1] in check.replace("'\n                '", "")
    assert "connection.disconnect()" in check
    assert "channel._in_poll" in check and "channel._brpop_sent_at" in check
    start = inspect.getsource(kombu_redis.Channel._brpop_start)
    assert "self._in_poll = self.client.connection" in start and "self._brpop_sent_at = monotonic()" in start
    assert "self.cycle = MultiChannelPoller()" in inspect.getsource(kombu_redis.Transport.__init__)
    assert "self.connection.cycle.add(self)" in inspect.getsource(kombu_redis.Channel.__init__)
