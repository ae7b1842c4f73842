"""From a stopped worker to a page, end to end: a real prefork worker exports over OTLP to
``tests.otlp_prometheus.PrometheusBridge``, Debian's Prometheus scrapes it with dashboards/prometheus.yml and
evaluates dashboards/alerts/*.yml, and sends its alerts to Debian's Alertmanager running
dashboards/alertmanager.yml, whose two webhooks point at a local receiver (the compose service's rendering,
with only the group waits shortened to a second).

Stopping the worker pages CeleryNoWorkerUp for its queue with its labels and runbook link (after the rule's
45 s and its 1 min `for`); a backlog alert of that queue is inhibited while another queue's is delivered; the
worker back, the page is resolved.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WorkerProcess, one_queue, wait_for
from tests.otlp_prometheus import PrometheusBridge
from tests.prometheus_server import (
    Alertmanager,
    Prometheus,
    WebhookReceiver,
    render_alertmanager_config,
    running_alertmanager,
    running_prometheus,
)

QUEUE = f"am-e2e-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[PrometheusBridge, Prometheus, Alertmanager, WebhookReceiver]]:
    webhook, bridge = WebhookReceiver(), PrometheusBridge()
    webhook.start()
    bridge.start()
    env = {"ALERTMANAGER_PAGE_WEBHOOK_URL": f"{webhook.url}/page",
           "ALERTMANAGER_TICKET_WEBHOOK_URL": f"{webhook.url}/ticket"}  # fmt: skip
    config = render_alertmanager_config(tmp_path, env, timings={"group_wait": "1s", "group_interval": "1s"})
    try:
        with (
            running_alertmanager(config, tmp_path) as alertmanager,
            running_prometheus(bridge, tmp_path, alertmanager=alertmanager.url) as prometheus,
        ):
            yield bridge, prometheus, alertmanager, webhook
    finally:
        bridge.stop()
        webhook.stop()


def _page(webhook: WebhookReceiver, status: str) -> list[dict[str, Any]]:
    return [
        alert for alert in webhook.alerts("/page")
        if alert["labels"].get("alertname") == "CeleryNoWorkerUp" and alert["labels"].get("queue") == QUEUE
        and alert["status"] == status
    ]  # fmt: skip


def test_a_stopped_worker_pages_inhibits_its_queues_backlog_alerts_and_resolves_when_back(
    stack: tuple[PrometheusBridge, Prometheus, Alertmanager, WebhookReceiver],
    worker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    bridge, prometheus, alertmanager, webhook = stack
    env = {**worker_env, "OTEL_EXPORTER_OTLP_ENDPOINT": bridge.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "500",
           **one_queue(QUEUE)}  # fmt: skip

    def worker(log: str) -> WorkerProcess:
        process = WorkerProcess(env, tmp_path / log, "--concurrency=1", "-Q", QUEUE)
        process.wait_ready()
        wait_for(lambda: prometheus.query(f'time() - celery_worker_heartbeat_seconds{{queue="{QUEUE}"}} < 5'),
                 timeout=60, what="the worker's fresh heartbeat in Prometheus")  # fmt: skip
        return process

    first = worker("first.log")
    first.stop()

    wait_for(lambda: _page(webhook, "firing"), timeout=240, interval=1, what="CeleryNoWorkerUp at the page hook")
    (page,) = _page(webhook, "firing")[:1]
    assert page["labels"] == {"alertname": "CeleryNoWorkerUp", "queue": QUEUE, "severity": "critical"}
    assert page["annotations"]["runbook_url"] == "docs/alerts.md#celerynoworkerup"
    assert QUEUE in page["annotations"]["summary"]

    # While the queue has no worker, its backlog alert is held back; another queue's goes out.
    inhibited = {"alertname": "CeleryQueueStalled", "severity": "critical", "queue": QUEUE}
    delivered = {"alertname": "CeleryQueueStalled", "severity": "critical", "queue": f"{QUEUE}-other"}
    alertmanager.post(inhibited, delivered)

    def stalled_pages() -> set[str]:
        return {
            a["labels"]["queue"] for a in webhook.alerts("/page") if a["labels"]["alertname"] == "CeleryQueueStalled"
        }

    wait_for(lambda: stalled_pages(), timeout=30, what="the other queue's CeleryQueueStalled at the page hook")
    held = [a for a in alertmanager.alerts() if a["labels"] == inhibited]
    assert [a["status"]["inhibitedBy"] != [] for a in held] == [True]
    assert stalled_pages() == {delivered["queue"]}
    alertmanager.resolve(inhibited, delivered)

    second = worker("second.log")
    try:
        wait_for(lambda: _page(webhook, "resolved"), timeout=120, interval=1, what="the page resolved")
    finally:
        second.stop()
