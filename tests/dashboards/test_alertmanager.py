"""The Alertmanager routing tree (dashboards/alertmanager.yml): `amtool check-config`, `amtool config routes
test` for each severity, and grouping and every inhibition rule in a real Alertmanager (Debian's package),
fed through its API the alerts Prometheus would send. The end to end path from a stopped worker to a webhook:
test_alertmanager_end_to_end.py."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, wait_for
from tests.prometheus_server import (
    Alertmanager,
    WebhookReceiver,
    render_alertmanager_config,
    running_alertmanager,
)

CONFIG = ROOT / "dashboards" / "alertmanager.yml"
RULE_FILES = sorted((ROOT / "dashboards" / "alerts").glob("*.yml"))
#: The backlog alerts of a queue, which its missing workers explain.
BACKLOG_ALERTS = ["CeleryQueueBacklogGrowing", "CeleryQueueWaitHigh", "CeleryWorkerNotConsuming", "CeleryQueueStalled"]


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail(
            "amtool not found: install Debian's package (apt-get install prometheus-alertmanager); make test does"
        )
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def _rules() -> dict[str, dict[str, str]]:
    """Every alert rule of dashboards/alerts: name -> labels."""
    return {
        rule["alert"]: rule.get("labels", {})
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_amtool_accepts_the_configuration_as_shipped_and_as_rendered(tmp_path: Path) -> None:
    """The committed file and its rendering with real-looking secrets (a URL with `&` and `|`, which sed would
    have taken as syntax) both pass `amtool check-config`; the rendering carries the URLs verbatim and is
    readable by its owner only."""
    assert _amtool("check-config", str(CONFIG)).returncode == 0
    page, ticket = "https://pager.example/hook?key=a&b|c", "https://tickets.example/new?x=1"
    rendered = render_alertmanager_config(
        tmp_path, {"ALERTMANAGER_PAGE_WEBHOOK_URL": page, "ALERTMANAGER_TICKET_WEBHOOK_URL": ticket}
    )
    result = _amtool("check-config", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    receivers = {r["name"]: r["webhook_configs"][0]["url"] for r in yaml.safe_load(rendered.read_text())["receivers"]}
    assert receivers == {"page": page, "ticket": ticket}
    assert rendered.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=CeleryNoWorkerUp", "queue=promos"], "page"),
        (["severity=warning", "alertname=CeleryQueueWaitHigh", "queue=deliveries"], "ticket"),
        (["alertname=SomethingWithoutSeverity"], "ticket"),
    ],
)
def test_critical_alerts_page_and_warnings_open_tickets(labels: list[str], receiver: str) -> None:
    result = _amtool("config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receiver}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_rule_reaches_the_receiver_of_its_severity() -> None:
    """Each rule's severity is one the tree routes (critical -> page, warning -> ticket)."""
    expected = {"critical": "page", "warning": "ticket"}
    routed = {}
    for name, labels in _rules().items():
        result = _amtool("config", "routes", "test", f"--config.file={CONFIG}", f"alertname={name}",
                         f"severity={labels['severity']}")  # fmt: skip
        routed[name] = (labels["severity"], result.stdout.split()[-1])
    assert {name: (s, r) for name, (s, r) in routed.items() if expected[s] != r} == {}


# --- a real Alertmanager --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def alertmanager(webhook: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    tmp_path = tmp_path_factory.mktemp("alertmanager")
    env = {"ALERTMANAGER_PAGE_WEBHOOK_URL": f"{webhook.url}/page",
           "ALERTMANAGER_TICKET_WEBHOOK_URL": f"{webhook.url}/ticket"}  # fmt: skip
    # Shipped routes, receivers and inhibitions; only the waits shortened so that a group is sent in a second.
    config = render_alertmanager_config(tmp_path, env, timings={"group_wait": "1s", "group_interval": "1s"})
    with running_alertmanager(config, tmp_path) as server:
        yield server


#: Alerts posted by the current test, resolved after it: a source left firing would inhibit the next test's.
_posted_alerts: list[dict[str, str]] = []


@pytest.fixture(autouse=True)
def _resolve_posted_alerts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if _posted_alerts and "alertmanager" in request.fixturenames:
        alertmanager: Alertmanager = request.getfixturevalue("alertmanager")
        alertmanager.resolve(*_posted_alerts)
        _posted_alerts.clear()

        wait_for(lambda: not alertmanager.alerts(), timeout=10, what="the test's alerts to be resolved")


def _inhibited(alertmanager: Alertmanager, **labels: str) -> bool:
    (alert,) = [a for a in alertmanager.alerts() if all(a["labels"].get(k) == v for k, v in labels.items())]
    return bool(alert["status"]["inhibitedBy"])


def _posted(alertmanager: Alertmanager, *alerts: dict[str, str]) -> None:
    alertmanager.post(*alerts)
    _posted_alerts.extend(alerts)
    wanted = len(alerts)

    def known() -> bool:
        labels = [a["labels"] for a in alertmanager.alerts()]
        return sum(1 for alert in alerts if alert in labels) == wanted

    wait_for(known, timeout=10, what="alertmanager to hold the posted alerts")


def test_a_queue_without_workers_inhibits_that_queues_backlog_alerts_only(alertmanager: Alertmanager) -> None:
    source = {"alertname": "CeleryNoWorkerUp", "severity": "critical", "queue": "inhibit-a"}
    targets = [{"alertname": name, "severity": "warning", "queue": queue, "test": "queue-down"}
               for name in BACKLOG_ALERTS for queue in ("inhibit-a", "inhibit-b")]  # fmt: skip
    unrelated = {"alertname": "DeadLettersPending", "severity": "warning", "task": "t", "test": "queue-down"}
    _posted(alertmanager, source, *targets, unrelated)

    def settled() -> bool:
        return all(_inhibited(alertmanager, **t) == (t["queue"] == "inhibit-a") for t in targets)

    wait_for(settled, timeout=10, what="the backlog alerts of the queue without workers to be inhibited")
    assert not _inhibited(alertmanager, **unrelated)
    assert not _inhibited(alertmanager, **source)


def test_no_worker_at_all_inhibits_every_queues_backlog_alerts(alertmanager: Alertmanager) -> None:
    _posted(alertmanager, {"alertname": "CeleryNoWorkerUp", "severity": "critical"})
    target = {"alertname": "CeleryQueueStalled", "severity": "critical", "queue": "inhibit-any", "test": "all-down"}
    _posted(alertmanager, target)
    wait_for(
        lambda: _inhibited(alertmanager, **target), timeout=10, what="a queue's alert inhibited by no worker at all"
    )


def test_an_slos_fast_burn_inhibits_its_own_slow_burn_only(alertmanager: Alertmanager) -> None:
    """The page about a budget burning fast silences the ticket of the same SLO, not another SLO's ticket."""
    rules = _rules()
    page = {**rules["PromoActivationSLOFastBurn"], "alertname": "PromoActivationSLOFastBurn"}
    own = {**rules["PromoActivationSLOSlowBurn"], "alertname": "PromoActivationSLOSlowBurn"}
    other = {**rules["NotificationDeliverySLOSlowBurn"], "alertname": "NotificationDeliverySLOSlowBurn"}
    assert page["slo"] == own["slo"] != other["slo"]
    _posted(alertmanager, page, own, other)
    wait_for(lambda: _inhibited(alertmanager, **own), timeout=10, what="the slow burn inhibited by its fast burn")
    assert not _inhibited(alertmanager, **other)
    assert not _inhibited(alertmanager, **page)


def test_the_broker_down_inhibits_every_other_alert(alertmanager: Alertmanager) -> None:
    """Every rule of dashboards/alerts and an alert added later (any name) wait behind the broker's page."""
    source = {"alertname": "CeleryBrokerUnreachable", "severity": "critical"}
    others = [{**labels, "alertname": name, "test": "broker-down", "queue": "inhibit-broker"}
              for name, labels in _rules().items() if name != source["alertname"]]  # fmt: skip
    later = {"alertname": "SomeAlertAddedLater", "severity": "warning", "test": "broker-down"}
    _posted(alertmanager, source, *others, later)

    def settled() -> bool:
        return all(_inhibited(alertmanager, **labels) for labels in [*others, later])

    wait_for(settled, timeout=10, what="every alert inhibited by CeleryBrokerUnreachable")
    assert not _inhibited(alertmanager, **source)


def test_alerts_are_grouped_by_alert_and_queue_and_sent_to_their_receiver(
    alertmanager: Alertmanager, webhook: WebhookReceiver
) -> None:
    """Two tasks' failures of one queue make one notification; another queue's, a second; each with its
    labels, at the receiver of its severity."""
    alerts = [{"alertname": "GroupingProbe", "severity": "warning", "queue": queue, "task": task}
              for queue, task in [("g1", "a"), ("g1", "b"), ("g2", "a")]]  # fmt: skip
    _posted(alertmanager, *alerts)

    def groups() -> dict[str, list[str]]:
        notified = [a for a in webhook.alerts("/ticket") if a["labels"]["alertname"] == "GroupingProbe"]
        by_queue: dict[str, set[str]] = {}
        for alert in notified:
            by_queue.setdefault(alert["labels"]["queue"], set()).add(alert["labels"]["task"])
        return {queue: sorted(tasks) for queue, tasks in by_queue.items()}

    wait_for(lambda: groups() == {"g1": ["a", "b"], "g2": ["a"]}, timeout=20, what="both groups at the ticket hook")
    assert all(a["labels"]["alertname"] != "GroupingProbe" for a in webhook.alerts("/page"))
