"""Connection health: a broker or result-backend connection that stops silently (a NAT or load balancer
dropping the flow: no reset, no close) is noticed and replaced by itself, within bounds - a worker consumes
again, a publish fails over or fails clearly, a result read fails instead of hanging.

Each test routes one process's Redis traffic through ``tests.tcp_proxy.TcpProxy`` and freezes it.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from django.conf import settings
from kombu.transport import redis as kombu_redis

from marketplace.celery import app as celery_app
from observability.messaging import redis_transport
from observability.results import GuardedBackend
from promotions.models import FlashPromo
from tests import tasks
from tests.conftest import ROOT, TEST_REDIS_URL, one_queue, wait_for
from tests.factories import ProductFactory
from tests.net import free_port, http_status, promo_create_request
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis_broker(reason="frozen Redis connections; AMQP has heartbeats")

#: The longest a request may take to answer while its broker connection is frozen.
WEB_ANSWER_BUDGET_SECONDS = 15.0


def _through(proxy: TcpProxy) -> str:
    return proxy.url(TEST_REDIS_URL)


@pytest.mark.django_db(transaction=True)
def test_a_worker_on_a_frozen_broker_connection_consumes_again_within_a_minute(proxy, start_worker, redis_client):
    """Given a worker whose broker and result backend go through a proxy, and a task it ran, when the proxy
    freezes every open connection (new ones still go through, as after a NAT dropped the flows), then a task
    published afterwards runs within 60 s, and the worker's log says once that it reconnected, and why -
    without restarting its consumer (which would cancel running tasks and requeue what it holds)."""
    url = _through(proxy)
    queue = f"frozen-{uuid.uuid4().hex}"  # no other worker of the session may take the tasks
    worker = start_worker("-Q", queue, env={"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url})
    first = uuid.uuid4().hex
    tasks.echo.apply_async((first,), queue=queue)
    wait_for(lambda: tasks.runs(first), what="the first task to run")

    proxy.freeze()
    frozen_at = time.monotonic()
    # The BRPOP in flight at the freeze ends on the server within its 1 s timeout; what it pops is lost with
    # the flow (a window no client setting closes). The task is published once Redis no longer serves it.
    wait_for(lambda: not proxy.holds_blocked_brpop(redis_client), timeout=10, what="the frozen BRPOP to time out")
    second = uuid.uuid4().hex
    tasks.echo.apply_async((second,), queue=queue)  # published by this process, straight to Redis

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


class _Web:
    """``manage.py runserver`` with its broker and result backend through ``proxy``, publishing to a queue of
    its own; ``create_promo`` posts ``/api/promos`` and returns the status and the seconds it took."""

    def __init__(self, proxy: TcpProxy, worker_env: dict[str, str], start_command: Any, log_path: Path) -> None:
        from django.contrib.auth.models import User
        from knox.models import AuthToken

        self.queue = f"web-{uuid.uuid4().hex}"
        self.port = free_port()
        self.log_path = log_path
        self.token = AuthToken.objects.create(user=User.objects.create_superuser(f"ops-{self.queue}"))[1]
        self.product_id: int = ProductFactory().pk  # type: ignore[attr-defined]  # a factory returns the model
        url = _through(proxy)
        env = {
            **worker_env,
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            **one_queue(self.queue),
        }
        with log_path.open("w") as log:
            start_command(
                [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(lambda: http_status(f"http://127.0.0.1:{self.port}/healthz") == 200, what="the web server")

    def create_promo(self, title: str) -> tuple[int | None, float]:
        request = promo_create_request(self.port, self.token, self.product_id, title)
        started = time.monotonic()
        status = http_status(request, timeout=60)
        return status, time.monotonic() - started

    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("new_connections", [True, False], ids=["fails-over", "black-hole"])
def test_a_request_publishing_over_a_frozen_broker_connection_answers_within_15_s(
    new_connections, proxy, worker_env, start_command, redis_client, tmp_path
):
    """Given a web server whose pooled broker connection carried a publish, when the proxy freezes it, then
    ``POST /api/promos`` still answers 201 within 15 s with the promo committed: the sweep it publishes on
    commit goes out over a new connection when one gets through (fails-over), or fails in one log line
    naming the broker error when none does (black-hole) - the next beat tick catches up."""
    web = _Web(proxy, worker_env, start_command, tmp_path / "web.log")
    assert web.create_promo("before")[0] == 201
    wait_for(lambda: redis_client.llen(web.queue) == 1, what="the first sweep to be published")

    proxy.freeze(new_connections=new_connections)
    status, seconds = web.create_promo("frozen")

    print(f"answered {status} in {seconds:.1f} s")
    assert status == 201
    assert seconds < WEB_ANSWER_BUDGET_SECONDS
    assert FlashPromo.objects.filter(title="frozen").exists()
    complaints = [e for e in web.log_events() if e["level"] in ("warning", "error", "critical")]
    if new_connections:
        wait_for(lambda: redis_client.llen(web.queue) == 2, timeout=5, what="the second sweep")
        assert complaints == []
    else:
        (line,) = complaints
        assert line["event"] == "promos.sweep_not_published"
        assert line["error"].startswith("OperationalError: ")
        assert redis_client.llen(web.queue) == 1


@pytest.fixture
def proxied_backend(proxy):
    """A Redis result backend of its own, through ``proxy``; its connections closed at the end."""
    backend = celery_app.backend.__class__(app=celery_app, url=_through(proxy))
    yield backend
    backend.result_consumer.stop()
    backend.client.connection_pool.disconnect()


@pytest.mark.parametrize("new_connections", [True, False], ids=["fails-over", "black-hole"])
def test_the_result_backend_over_a_frozen_connection_fails_over_or_fails_within_bounds(
    new_connections, proxy, proxied_backend
):
    """Given a result backend through a proxy whose connections carried a store and a read, when the proxy
    freezes them, then reading a result (``.get()``) goes through on a new connection or fails within two
    socket timeouts, and the worker's guarded store of a task's state goes through or gives up (logged, the
    run's outcome kept) within four: never a hang."""
    backend = proxied_backend
    done, pending = uuid.uuid4().hex, uuid.uuid4().hex
    backend.store_result(done, 42, "SUCCESS")
    results = [AsyncResult(done, backend=backend)]
    assert results[0].get(timeout=10) == 42
    timeout = settings.REDIS_SOCKET_TIMEOUT_SECONDS

    proxy.freeze(new_connections=new_connections)
    started = time.monotonic()
    results.append(AsyncResult(done if new_connections else pending, backend=backend))
    if new_connections:
        assert results[-1].get(timeout=30) == 42
    else:
        with pytest.raises(redis.RedisError):
            results[-1].get(timeout=30)
    assert time.monotonic() - started < 2 * timeout + 1
    started = time.monotonic()
    GuardedBackend(backend, "tests.echo").mark_as_done(pending, 7)
    assert time.monotonic() - started < 4 * timeout + 1

    stored = redis.Redis.from_url(TEST_REDIS_URL).get(backend.get_key_for_task(pending))
    assert (stored is not None) is new_connections
    # A collected result unsubscribes over its backend, which the proxy's teardown cuts: detach them first.
    for result in results:
        result.backend = None


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
