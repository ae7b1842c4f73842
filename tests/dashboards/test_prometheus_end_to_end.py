"""The dashboards and alert rules against a real Prometheus fed by a real worker: a panel with no data fails.

A prefork worker and a real ``celery beat`` export over OTLP to ``tests.otlp_prometheus.PrometheusBridge``
(the Collector's part of the production path, with the Collector's name translation); Debian's Prometheus
scrapes it with the scrape settings of ``dashboards/prometheus.yml`` and loads ``dashboards/alerts/*.yml``.
The workload has successes, retries, dead letters (and a replay and a purge), a rejected message, a backlog,
beat runs of every schedule entry, a promo going live and one ending, and notifications sent and refused.
Then every target of every panel of every dashboard is evaluated over the workload's time range and must
return at least one number, every template variable must have values, and every alert rule must evaluate.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import yaml
from django.utils import timezone

from marketplace.celery import app as celery_app
from tests import tasks
from tests.conftest import ROOT, TEST_BROKER, WorkerProcess, broker_url_at, one_queue, running_beat, wait_for
from tests.metrics_catalogue import catalogue, recorded
from tests.net import free_port
from tests.otlp_prometheus import PrometheusBridge, translate_name
from tests.prometheus_server import ALERT_FILES, Prometheus, running_prometheus
from tests.smtp import REFUSED_PREFIX, SmtpSink

# Transactional: the worker must see the workload's rows. The marker also makes pytest-django create the
# test database when this module runs alone.
pytestmark = [pytest.mark.django_db(transaction=True)]

DASHBOARDS = sorted((ROOT / "dashboards" / "grafana" / "json").glob("*.json"))
QUEUE = "e2e"
#: The queue of the workload's worker without a result backend.
BACKENDLESS_QUEUE = "e2e-backendless"
WAVES, WAVE_SECONDS = 5, 1.5
#: The per-task dashboard is shown for the task whose workload has every outcome: succeeded, retried,
#: dead_lettered - and errors by type.
SHOWN_TASK = "tests.flaky"
#: Grafana's built-in variables, as Grafana would fill them for a short range at a 1 s scrape interval.
BUILTINS = {"$__rate_interval": "10s", "$__interval": "1s", "$__range": "5m", "$queue": ".*"}


# --- Prometheus --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bridge() -> Iterator[PrometheusBridge]:
    receiver = PrometheusBridge()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def prometheus(bridge: PrometheusBridge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    with running_prometheus(bridge, tmp_path_factory.mktemp("prometheus")) as server:
        yield server


# --- the workload ------------------------------------------------------------------------------------------
@dataclass
class Workload:
    start: float
    end: float


#: ``manage.py dlq`` in a process of its own (it exports its counters at exit), with the test tasks registered.
_DLQ = "import sys, django; django.setup(); import tests.tasks; from django.core.management import call_command; "
_DLQ += "call_command('dlq', *sys.argv[1:])"


def _dlq(env: dict[str, str], *args: str) -> str:
    command = [sys.executable, "-c", _DLQ, *args]
    environment = {**env, "DJANGO_SETTINGS_MODULE": "marketplace.settings"}
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


#: A publish the broker refuses (its port closed), in a process of its own that exports at exit: the failed-publish
#: counter and the failed outcome of the publish-duration histogram.
_REFUSED = "\n".join([
    "import django; django.setup()",
    "from kombu.exceptions import OperationalError",
    "from observability import telemetry",
    "from tests import tasks",
    "telemetry.setup('cli')",
    "try:",
    "    tasks.echo.apply_async(('refused',), queue=sys.argv[1], ignore_result=True)",
    "except OperationalError:",
    "    pass",
    "finally:",
    "    telemetry.shutdown()",
])  # fmt: skip


def _refused_publish(env: dict[str, str]) -> None:
    environment = {**env, "DJANGO_SETTINGS_MODULE": "marketplace.settings",
                   "CELERY_BROKER_URL": broker_url_at(free_port())}  # fmt: skip
    command = [sys.executable, "-c", "import sys\n" + _REFUSED, QUEUE]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _promotions(waves: int) -> None:
    """A promo going live in each wave, each with three subscribers who get an email and one whose address the
    SMTP server refuses; and a promo that ended. Beat's first sweep schedules each start to the second, so the
    activations are spread over the waves and the lag histogram grows between scrapes."""
    from promotions.models import PromoStatus
    from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory

    now = timezone.now()
    for wave in range(waves):
        product = ProductFactory()
        PromoFactory(product=product, starts_at=now + timedelta(seconds=5 + wave * WAVE_SECONDS))
        SubscriptionFactory.create_batch(3, product=product)
        SubscriptionFactory(product=product, email=f"{REFUSED_PREFIX}.{wave}@example.com")
    PromoFactory(status=PromoStatus.ACTIVE, starts_at=now - timedelta(hours=2), ends_at=now - timedelta(seconds=1))


def _wave(token: str) -> list[Any]:
    """One wave of tasks: a backlog of short sleeps, successes, and retries that then succeed."""
    for _ in range(20):
        tasks.sleeper.apply_async((token, 0.05), queue=QUEUE)
    results = [tasks.echo.apply_async((token,), queue=QUEUE) for _ in range(10)]
    return results + [tasks.flaky.apply_async((uuid.uuid4().hex, 1), queue=QUEUE) for _ in range(2)]


@pytest.fixture(scope="module")
def workload(
    prometheus: Prometheus,
    bridge: PrometheusBridge,
    worker_env: dict[str, str],
    smtp_sink: SmtpSink,
    django_db_blocker: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workload]:
    from observability.deadletters.models import DeadLetter
    from promotions.models import FlashPromo, PromoStatus
    from promotions.tasks import queue_promo_notifications

    tmp_path = tmp_path_factory.mktemp("workload")
    env = {**worker_env, "OTEL_EXPORTER_OTLP_ENDPOINT": bridge.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "500",
           "OTEL_BSP_SCHEDULE_DELAY": "100", **one_queue(QUEUE)}  # fmt: skip
    start = time.time()
    with django_db_blocker.unblock():
        worker = WorkerProcess(env, tmp_path / "worker.log", "--concurrency=2", "--include=tests.tasks", "-Q", QUEUE)
        # A worker whose result backend is unreachable: its successes are counted as results not stored.
        backendless = WorkerProcess(
            {**env, "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{free_port()}/0"},
            tmp_path / "backendless.log", "--concurrency=1", "--include=tests.tasks", "-Q", BACKENDLESS_QUEUE,
        )  # fmt: skip
        try:
            worker.wait_ready()
            backendless.wait_ready()
            tasks.echo.apply_async(("unstored",), queue=BACKENDLESS_QUEUE)
            # One throttling answer from the SMTP server: the throttle counter, and the pause's wait in the rate
            # limiter's wait counter (the message is sent again after it).
            smtp_sink.throttle(1)
            _promotions(WAVES)
            token = uuid.uuid4().hex
            doomed = [tasks.flaky.apply_async((uuid.uuid4().hex, 10), queue=QUEUE)]
            doomed += [tasks.permanent.apply_async((token,), queue=QUEUE) for _ in range(2)]
            celery_app.send_task("no.such.task", queue=QUEUE)
            # A malformed message for a domain task (not a list of ids): a dead letter of a promotions task.
            doomed.append(queue_promo_notifications.apply_async((["not-an-id"],), queue=QUEUE))
            results = []
            with running_beat(env, tmp_path) as beat_log:
                # Paced, not synchronising: rate() only sees a counter grow between two scrapes, so the
                # workload must span several scrapes - as real traffic does - rather than come in one burst.
                for _ in range(WAVES):
                    results += _wave(token)
                    time.sleep(WAVE_SECONDS)
                for result in results:
                    result.get(timeout=60)
                wait_for(
                    lambda: (
                        {p.attributes["entry"] for p in bridge.latest("celery.beat.last_success")}
                        >= set(celery_app.conf.beat_schedule)
                    ),
                    timeout=60,
                    what=f"a successful run of every beat entry:\n{beat_log.read_text()}",
                )
            wait_for(
                lambda: DeadLetter.objects.filter(task_id__in=[r.id for r in doomed]).count() == len(doomed),
                timeout=60,
                what="the dead letters",
            )
            wait_for(
                lambda: not FlashPromo.objects.exclude(status__in=[PromoStatus.ACTIVE, PromoStatus.ENDED]).exists(),
                timeout=60,
                what="every promo of the workload to go live",
            )
            replayed = DeadLetter.objects.filter(task_name="tests.permanent").values_list("id", flat=True)[0]
            assert "Published 1 " in _dlq(env, "replay", str(replayed))
            assert "Deleted 1 " in _dlq(env, "purge", "--status", "replayed", "--yes")
            _refused_publish(env)
            _wait_until_scraped(prometheus, list(catalogue(TEST_BROKER)))
            _feed_until_every_panel_has_data(prometheus, start, token)
            yield Workload(start=start, end=time.time() + 1)
        finally:
            backendless.stop()
            worker.stop()


def _feed_until_every_panel_has_data(prometheus: Prometheus, start: float, token: str) -> None:
    """Go on feeding promos and task waves - as real traffic would go on - until every panel has data, or 90 s.

    A ``rate()`` over a short window needs two scrapes of one series that saw it grow, and each prefork child
    exports series of its own: on a loaded machine the paced waves can fall between scrapes, or into a child's
    first sample (which ``rate()`` never counts). Waiting for the condition, not for a number of waves, keeps
    that timing out of the test; a panel that can never get data still fails below, once the deadline is past.
    """
    from promotions.tasks import check_active_promos
    from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory

    exprs = sorted({_substitute(p.values[1]) for p in _targets()})
    lacking = list(exprs)

    def fed_and_complete() -> bool:
        lacking[:] = [e for e in lacking if not prometheus.numbers(e, start, time.time())]
        if lacking:
            product = ProductFactory()
            SubscriptionFactory.create_batch(3, product=product)
            SubscriptionFactory(product=product, email=f"{REFUSED_PREFIX}.{uuid.uuid4().hex[:8]}@example.com")
            PromoFactory(product=product, starts_at=timezone.now())
            check_active_promos.apply_async(queue=QUEUE)
            _wave(token)
        return not lacking

    # Past the deadline, each panel still without data fails its own test, with its expression.
    with contextlib.suppress(pytest.fail.Exception):
        wait_for(fed_and_complete, timeout=90, interval=2, what="data in every panel")


def _wait_until_scraped(prometheus: Prometheus, names: list[str]) -> None:
    missing = list(names)

    def scraped() -> bool:
        missing[:] = [n for n in missing if not prometheus.query(f"count({n}_bucket) or count({n})")]
        return not missing

    try:
        wait_for(scraped, timeout=60, interval=0.5, what="every catalogued metric in Prometheus")
    except pytest.fail.Exception:
        pytest.fail(f"never reached Prometheus: {missing}")


# --- dashboards --------------------------------------------------------------------------------------------
def _panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from _panels(panel)


_REDIS_ONLY_NAMES = sorted(set(catalogue()) - set(catalogue("rabbitmq")))
_REDIS_ONLY_PANEL = pytest.mark.redis_broker(reason="a series only Redis makes (docs/metrics.md)")


def _targets() -> list[Any]:
    params = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    # A panel of a series only Redis makes has no data on RabbitMQ, as the catalogue says.
                    marks = [_REDIS_ONLY_PANEL] if any(n in target["expr"] for n in _REDIS_ONLY_NAMES) else []
                    params.append(
                        pytest.param(path.stem, target["expr"], id=f"{path.stem}:{panel['title']}", marks=marks)
                    )
    return params


def _substitute(expr: str) -> str:
    # Longest names first, so $__rate_interval is not taken for $__range's prefix and $task stays distinct.
    for name, value in sorted({**BUILTINS, "$task": SHOWN_TASK}.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value).replace("${" + name[1:] + "}", value)
    return expr


@pytest.mark.parametrize(("dashboard", "expr"), _targets())
def test_every_panel_shows_data_from_the_workload(workload: Workload, prometheus: Prometheus, dashboard, expr):
    numbers = prometheus.numbers(_substitute(expr), workload.start, workload.end)
    assert numbers, f"{dashboard}: no data for {_substitute(expr)}"


def _selectors(expr: str) -> list[str]:
    """The vector selectors of ``expr`` (a catalogued metric or recorded series, with its label matchers)."""
    known = {f"{n}(?:_bucket|_sum|_count)?" for n in catalogue()} | {re.escape(n) for n in recorded()}
    names = "|".join(sorted(known, key=len, reverse=True))
    return [m.group(0) for m in re.finditer(rf"(?<![\w:])(?:{names})(?![\w:])(?:\{{[^}}]*\}})?", expr)]


@pytest.mark.parametrize(("dashboard", "expr"), _targets())
def test_every_selector_of_every_panel_matches_series(workload: Workload, prometheus: Prometheus, dashboard, expr):
    """Fallbacks (``or vector(0)``) keep a panel from going blank when nothing happened; they would also hide a
    misspelled metric or label. So each selector on its own must match series of the workload."""
    selectors = _selectors(_substitute(expr))
    assert selectors, expr
    for selector in selectors:
        series = prometheus.api(
            "series", **{"match[]": selector, "start": str(workload.start), "end": str(workload.end)}
        )
        assert series, f"{dashboard}: {selector} matches nothing"


def test_every_template_variable_has_values(workload: Workload, prometheus: Prometheus):
    """``label_values(<selector>, <label>)``: what Grafana's variable query asks Prometheus for."""
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text()).get("templating", {}).get("list", []):
            query = variable.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            if variable.get("type") != "query" or not query:
                continue
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", _substitute(query))
            assert match, f"{path.stem}: variable {variable['name']} query {query!r} is not label_values(...)"
            selector, label = match.groups()
            values = prometheus.api(f"label/{label}/values", **{"match[]": selector})
            assert values, f"{path.stem}: variable {variable['name']} has no values for {selector}"
            if label == "task":
                assert SHOWN_TASK in values


def test_exemplars_link_duration_samples_to_exported_traces(workload: Workload, prometheus: Prometheus, bridge):
    """Grafana's exemplar link opens ``trace_id`` in Tempo: the ids Prometheus holds are of real spans."""
    data = prometheus.api(
        "query_exemplars", query="celery_task_duration_seconds_bucket", start=str(workload.start), end=str(workload.end)
    )
    trace_ids = {e["labels"]["trace_id"] for series in data for e in series["exemplars"]}
    assert trace_ids
    assert trace_ids <= {span.trace_id for span in bridge.spans}


# --- alerts ------------------------------------------------------------------------------------------------
def _rules() -> list[Any]:
    return [
        pytest.param(rule["alert"], rule["expr"], id=rule["alert"])
        for path in ALERT_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


@pytest.mark.parametrize(("alert", "expr"), _rules())
def test_every_alert_expression_evaluates(workload: Workload, prometheus: Prometheus, alert, expr):
    prometheus.query(expr)  # raises unless Prometheus parsed and evaluated it


def test_prometheus_loaded_and_evaluated_every_rule(workload: Workload, prometheus: Prometheus):
    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if all(not r["lastEvaluation"].startswith("0001-") for r in rules) else None

    rules = wait_for(evaluated, timeout=30, what="an evaluation of every rule")
    assert {r["name"] for r in rules if r["type"] == "alerting"} == {p.values[0] for p in _rules()}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def test_the_slo_rules_measure_the_workloads_promos_and_notifications(workload: Workload, prometheus: Prometheus):
    """Prometheus records both objectives' error ratios from the workload's real histograms and counters. One
    subscriber in four of each promo has an address the SMTP server refuses - given up on, a bad event - so the
    delivery objective's bad share is at least a fifth and its page fires; the activation ratio is a share."""

    def ratio(objective: str) -> list[float]:
        """The recorded 30-day ratio, as a one-item list once it is a number (NaN: no event counted yet)."""
        result = prometheus.query(f'slo:sli_error:ratio_rate30d{{slo="{objective}"}}')
        return [value for value in (float(r["value"][1]) for r in result) if value == value]

    (delivery,) = wait_for(lambda: ratio("notification_delivery"), timeout=30, what="the delivery SLO's ratio")
    assert 0.2 <= delivery <= 1
    (activation,) = wait_for(lambda: ratio("promo_activation"), timeout=30, what="the activation SLO's ratio")
    assert 0 <= activation <= 1

    def page_state() -> str | None:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        (rule,) = [r for r in rules if r["name"] == "NotificationDeliverySLOFastBurn"]
        return rule["state"] if rule["state"] == "firing" else None

    wait_for(page_state, timeout=30, what="NotificationDeliverySLOFastBurn firing on the refused deliveries")


# --- names -------------------------------------------------------------------------------------------------
def test_the_bridge_names_metrics_as_the_collector_does():
    """Upstream's own examples (otlptranslator metric_namer.go / unit_namer.go)."""
    assert translate_name("http.server.duration", "s", "histogram") == "http_server_duration_seconds"
    assert translate_name("requests.count", "1", "counter") == "requests_count_total"
    assert translate_name("memory.usage", "By", "gauge") == "memory_usage_bytes"
    assert translate_name("cpu.utilization", "1", "gauge") == "cpu_utilization_ratio"
    assert translate_name("network.io", "By/s", "gauge") == "network_io_bytes_per_second"
    assert translate_name("celery.tasks.finished", "{task}", "counter") == "celery_tasks_finished_total"


def test_prometheus_holds_exactly_the_catalogued_names(workload: Workload, bridge: PrometheusBridge):
    """What the worker, beat and the CLI exported is what docs/metrics.md promises, no more, no less."""
    assert bridge.names == set(catalogue(TEST_BROKER))


# --- bounded series ----------------------------------------------------------------------------------------
def test_recycled_children_are_one_series_per_slot_that_never_resets(
    prometheus: Prometheus, bridge: PrometheusBridge, start_worker: Callable[..., WorkerProcess]
):
    """100 tasks through 2 slots, 5 per child (20 children): Prometheus holds one series per slot, whose
    ``resets()`` is 0 and whose sum is exactly 100 (``observability.telemetry.pool_slots``). Prometheus scrapes
    between each batch of 20, so a replacement child starting from zero would be seen falling."""
    queue = "e2e-slots"
    worker = start_worker(
        "-Q", queue, "--max-tasks-per-child=5",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": bridge.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "200"},
    )  # fmt: skip
    finished = f'celery_tasks_finished_total{{queue="{queue}", task="tests.pid"}}'

    def scraped(total: int) -> Callable[[], bool]:
        return lambda: sum(float(s["value"][1]) for s in prometheus.query(finished)) == total

    for done in range(20, 101, 20):
        for result in [tasks.pid.apply_async(queue=queue) for _ in range(20)]:
            result.get(timeout=30)
        wait_for(scraped(done), timeout=30, what=f"Prometheus to scrape {done} runs")
    instances = {s["metric"]["instance"] for s in prometheus.query(finished)}
    assert instances == {f"{worker.name}-slot0", f"{worker.name}-slot1"}
    assert [s["value"][1] for s in prometheus.query(f"sum(resets({finished}[5m]))")] == ["0"]
