"""Contract of the Grafana dashboards in dashboards/grafana/json, checked without Grafana or Prometheus.

The committed JSON (and the README's panel reference) is exactly what ``python -m dashboards.generate`` makes.
Every panel queries the provisioned Prometheus datasource, says what it shows and what red means, has a
unit and thresholds (or a stated reason for none); every metric it reads is in docs/metrics.md; the Celery
dashboards have the queue and task variables and the overview filters every metric that has a queue or task
label by them; the run duration panels request exemplars (trace links); every query is valid PromQL for
``promtool``. Whether each query returns data is tests/test_prometheus_end_to_end.py's job.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any, NamedTuple

import pytest
import yaml

from dashboards import generate, promql
from dashboards.boards import BOARDS
from dashboards.spec import runbook
from tests.conftest import ROOT
from tests.metrics_catalogue import catalogue, readable_names, recorded

JSON_DIR = ROOT / "dashboards" / "grafana" / "json"
#: Grafana's built-ins and the variables, as an end-to-end check would fill them in.
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$queue": ".*",
    "$task": "promotions.tasks.check_active_promos",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
PROMQL_KEYWORDS |= {"and", "or", "unless", "atan2", "inf", "nan"}


# --- helpers -----------------------------------------------------------------------------------------------
def _dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(JSON_DIR.glob("*.json"))}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in _panels(dashboard) for target in panel["targets"]]


class Selector(NamedTuple):
    metric: str
    matchers: str
    #: The functions and aggregations around the selector, innermost first.
    calls: tuple[str, ...]


def _selectors(expr: str) -> list[Selector]:
    """Every series selector of ``expr``. Label matchers, strings, grouping clauses and range windows are set
    aside first, so label names and function names are never taken for metrics."""
    matchers: list[str] = []

    def keep_matchers(match: re.Match[str]) -> str:
        matchers.append(match.group(0))
        return f"{{{len(matchers) - 1}}}"

    text = re.sub(r"\{[^{}]*\}", keep_matchers, expr)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    found = []
    for match in re.finditer(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)\s*(\{\d+\})?(\s*\()?", text):
        name, block, call = match.groups()
        if call or name in PROMQL_KEYWORDS:
            continue
        found.append(Selector(name, matchers[int(block[1:-1])] if block else "", _calls_around(text, match.start())))
    return found


def _calls_around(text: str, position: int) -> tuple[str, ...]:
    calls, depth = [], 0
    for index in range(position - 1, -1, -1):
        if text[index] == ")":
            depth += 1
        elif text[index] == "(" and depth:
            depth -= 1
        elif text[index] == "(":
            name = re.search(r"(\w*)\s*$", text[:index])
            calls.append(name.group(1) if name else "")
    return tuple(calls)


def _substituted(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


# --- the specification -------------------------------------------------------------------------------------
def test_committed_files_are_the_generator_output():
    """The JSON and the README's panel reference are generated: editing either by hand is caught here."""
    stale = [
        str(path.relative_to(ROOT))
        for path, text in generate.outputs().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert stale == [], f"run `python -m dashboards.generate`: {stale} differ from the generator's output"
    assert sorted(path.stem for path in JSON_DIR.glob("*.json")) == sorted(board.uid for board in BOARDS)


def test_the_three_dashboards_have_fixed_uids_tags_and_links():
    """Fixed uids keep URLs stable; each dashboard links to the two others, carrying variables and time."""
    dashboards = _dashboards()
    assert set(dashboards) == {"celery-overview", "celery-task", "promotions"}
    for uid, dashboard in dashboards.items():
        assert dashboard["uid"] == uid
        assert "marketplace" in dashboard["tags"]
        assert 39 <= dashboard["schemaVersion"] <= 41
        links = {link["url"] for link in dashboard["links"]}
        assert links == {f"/d/{other}" for other in dashboards if other != uid}
        assert all(link["includeVars"] and link["keepTime"] for link in dashboard["links"])


def test_every_panel_queries_the_provisioned_prometheus():
    """Datasource uid ``prometheus`` on every panel, target and variable: the one the provisioning creates."""
    for dashboard in _dashboards().values():
        for panel in _panels(dashboard):
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "prometheus", panel["title"]
                assert target["refId"], panel["title"]
        for variable in dashboard["templating"].get("list", []):
            assert variable["datasource"]["uid"] == "prometheus"


def test_every_panel_says_what_it_shows_has_a_unit_and_thresholds_or_a_reason_for_none():
    """A description with what red means (or why nothing is red), a unit, and threshold steps; a panel with
    only the base step is one whose spec states why no value of it is bad by itself."""
    specs = {(board.uid, panel.title): panel for board in BOARDS for panel in board.panels}
    for uid, dashboard in _dashboards().items():
        titles = [panel["title"] for panel in _panels(dashboard)]
        assert len(titles) == len(set(titles)), f"{uid}: panel titles must be unique (the README is keyed by them)"
        for panel in _panels(dashboard):
            defaults = panel["fieldConfig"]["defaults"]
            where = f"{uid} / {panel['title']}"
            assert panel["type"] in {"timeseries", "stat", "bargauge", "table"}, where
            assert panel["description"].strip(), where
            assert defaults["unit"], where
            steps = defaults["thresholds"]["steps"]
            assert steps[0]["value"] is None, where
            assert [step["value"] for step in steps[1:]] == sorted(step["value"] for step in steps[1:]), where
            if len(steps) > 1:
                assert "**Red:**" in panel["description"], where
            else:
                assert specs[(uid, panel["title"])].no_threshold, where
                assert "**No threshold:**" in panel["description"], where


def test_every_metric_is_in_the_catalogue():
    """Only the Prometheus names of docs/metrics.md (a histogram through its _bucket, _sum or _count series),
    with the labels the catalogue gives them."""
    entries = catalogue()
    assert len(entries) >= 20, "docs/metrics.md's tables were not parsed"
    allowed = readable_names(entries) | set(recorded())
    for uid, dashboard in _dashboards().items():
        for expr in _exprs(dashboard):
            names = {selector.metric for selector in _selectors(expr)}
            assert names, f"{uid}: no metric found in {expr}"
            assert names <= allowed, f"{uid}: {names - allowed} not in docs/metrics.md: {expr}"
    for metric in promql.USED_METRICS:
        assert entries[metric.name].labels == metric.labels, metric.name


def test_the_selector_parser_finds_metrics_not_labels_or_functions():
    """The parser the checks above rely on."""
    expr = (
        'sum by (task) (rate(a_total{queue=~"$queue", outcome="x"}[$__rate_interval])) or 0 * max(b)'
        ' or label_replace(vector(0), "error_type", "none", "", "") or time() - c_seconds < bool 60'
    )
    assert _selectors(expr) == [
        ("a_total", '{queue=~"$queue", outcome="x"}', ("rate", "sum")),
        ("b", "", ("max",)),
        ("c_seconds", "", ()),
    ]


def test_the_celery_dashboards_have_queue_and_task_variables():
    """``queue``: every queue, All = ``.*``, several at once. ``task``: the tasks of the chosen queues; the
    per-task dashboard shows exactly one."""
    dashboards = _dashboards()
    for uid in ("celery-overview", "celery-task"):
        variables = {variable["name"]: variable for variable in dashboards[uid]["templating"]["list"]}
        queue, task = variables["queue"], variables["task"]
        assert queue["query"] == "label_values(celery_tasks_finished_total, queue)"
        assert (queue["includeAll"], queue["allValue"], queue["multi"]) == (True, ".*", True)
        assert task["query"] == 'label_values(celery_tasks_finished_total{queue=~"$queue"}, task)'
        if uid == "celery-overview":
            assert (task["includeAll"], task["allValue"], task["multi"]) == (True, ".*", True)
        else:
            assert not task.get("includeAll") and not task.get("multi")
    assert dashboards["promotions"]["templating"].get("list", []) == []


@pytest.mark.parametrize("uid", ["celery-overview", "celery-task"])
def test_celery_queries_filter_by_queue_and_task_where_the_metric_has_them(uid):
    """A metric with a queue (task) label is always matched with ``queue=~"$queue"`` (``task=~"$task"``):
    no panel silently ignores the variables."""
    entries = catalogue()
    for expr in _exprs(_dashboards()[uid]):
        for name, matchers, _ in _selectors(expr):
            labels = entries[re.sub(r"_(bucket|sum|count)$", "", name) if name not in entries else name].labels
            for label in {"queue", "task"} & labels:
                assert f'{label}=~"${label}"' in matchers, f"{uid}: {name} not filtered by ${label} in {expr}"


def test_every_query_aggregates_over_processes():
    """Each series exists once per process (``instance``): no query shows a raw series. The recording rules'
    series are Prometheus' own, summed over processes already, one per objective."""
    precomputed = set(recorded())
    for uid, dashboard in _dashboards().items():
        for expr in _exprs(dashboard):
            for selector in _selectors(expr):
                if selector.metric in precomputed:
                    continue
                assert {"sum", "max"} & set(selector.calls), f"{uid}: {selector.metric} not aggregated in {expr}"


def test_run_duration_panels_request_exemplars_and_histograms_are_summed_by_le():
    """The duration histogram's samples carry trace ids: its panels ask for exemplars, which the datasource
    links to Tempo. A quantile is taken over buckets summed by ``le`` (never an average of quantiles)."""
    with_exemplars = 0
    for dashboard in _dashboards().values():
        for panel in _panels(dashboard):
            for target in panel["targets"]:
                if "histogram_quantile" in target["expr"]:
                    assert re.search(r"sum by \(le\b", target["expr"]), target["expr"]
                if panel["type"] == "timeseries" and "celery_task_duration_seconds" in target["expr"]:
                    assert target.get("exemplar") is True, panel["title"]
                    with_exemplars += 1
    assert with_exemplars >= 4


def test_series_with_a_task_label_link_to_the_per_task_dashboard():
    """From a task's series on the overview, one click opens the per-task dashboard for it."""
    overview = _dashboards()["celery-overview"]
    linked = [panel for panel in _panels(overview) if panel["fieldConfig"]["defaults"].get("links")]
    assert len(linked) >= 5
    for panel in linked:
        (link,) = panel["fieldConfig"]["defaults"]["links"]
        assert link["url"].startswith("/d/celery-task?var-task=${__field.labels.task}&${queue:queryparam}")
        assert all("{{task}}" in target["legendFormat"] for target in panel["targets"]), panel["title"]


def test_panels_name_alerts_that_exist():
    """A panel whose red an alert also watches names it; the alert exists in dashboards/alerts/ with the
    runbook anchor the panel links to."""
    runbooks = {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for path in sorted((ROOT / "dashboards" / "alerts").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    named = {panel.alert for board in BOARDS for panel in board.panels if panel.alert}
    assert len(named) >= 8
    for alert in named:
        assert alert in runbooks, f"no alert {alert} in dashboards/alerts/"
        assert runbooks[alert] == runbook(alert)


def test_only_known_template_variables_are_used():
    """Grafana fills in its built-ins and the dashboard's variables; anything else would reach Prometheus."""
    for uid, dashboard in _dashboards().items():
        variables = {f"${variable['name']}" for variable in dashboard["templating"].get("list", [])}
        for expr in _exprs(dashboard):
            used = set(re.findall(r"\$\w+", expr))
            assert used <= variables | {"$__rate_interval", "$__interval", "$__range"}, f"{uid}: {expr}"


def test_every_query_is_valid_promql(tmp_path):
    """``promtool check rules`` parses each query (variables filled in) as a recording rule's expression."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's prometheus package (.ci/run does)")
    rules = [
        {"record": f"dashboards:{uid.replace('-', '_')}:{index}", "expr": _substituted(expr)}
        for uid, dashboard in _dashboards().items()
        for index, expr in enumerate(_exprs(dashboard))
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
