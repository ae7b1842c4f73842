"""The service level objectives of ``dashboards/slo.py`` as ``dashboards/alerts/slo.yml`` and docs/slo.md state
them: two alerts per objective (a page and a ticket) on the workbook's four window pairs, each window an alert
reads recorded for its objective, thresholds that are burn rate x budget, and documents that give the code's
numbers. promtool runs the rules themselves (``test_alerts.py``); a real Prometheus evaluates them on a real
worker's metrics (``test_prometheus_end_to_end.py``)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from dashboards import slo
from tests.conftest import ROOT

SLO_RULES = ROOT / "dashboards" / "alerts" / "slo.yml"
DOC, RUNBOOK = ROOT / "docs" / "slo.md", ROOT / "docs" / "alerts.md"


def _rules() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(SLO_RULES.read_text())["groups"]
    return list(group["rules"])


def _percent(value: float) -> str:
    return f"{round(value * 100, 4):g}%"


def test_each_objective_has_a_page_and_a_ticket_on_the_workbooks_windows():
    """Per SLO: ``<Alert>FastBurn`` critical at 14.4x over 1h/5m or 6x over 6h/30m; ``<Alert>SlowBurn`` warning
    at 3x over 1d/2h or 1x over 3d/6h - each threshold the burn rate times the budget."""
    alerts = {rule["alert"]: rule for rule in _rules() if "alert" in rule}
    assert len(alerts) == 2 * len(slo.SLOS)
    expected = {"FastBurn": ("critical", {("1h", "5m", 14.4), ("6h", "30m", 6.0)}),
                "SlowBurn": ("warning", {("1d", "2h", 3.0), ("3d", "6h", 1.0)})}  # fmt: skip
    for objective in slo.SLOS:
        for suffix, (severity, pairs) in expected.items():
            alert = alerts[f"{objective.alert}{suffix}"]
            assert alert["labels"] == {"severity": severity, "slo": objective.name}
            found = re.findall(
                rf'slo:sli_error:ratio_rate(\w+)\{{slo="{objective.name}"\}} > \(([\d.]+) \* ([\d.]+)\)', alert["expr"]
            )
            assert len(found) == 4, alert["expr"]
            assert {float(budget) for *_, budget in found} == {objective.budget}
            windows = [(window, float(burn)) for window, burn, _ in found]
            assert {(windows[i][0], windows[i + 1][0], windows[i][1]) for i in (0, 2)} == pairs
            assert " and\n" in alert["expr"] and "\nor\n" in alert["expr"]


def test_every_window_an_alert_reads_is_recorded_for_its_objective():
    recorded = {(rule["record"], rule["labels"]["slo"]) for rule in _rules() if "record" in rule}
    assert len(recorded) == len(slo.WINDOWS) * len(slo.SLOS)
    for rule in _rules():
        if "alert" in rule:
            for name, objective in re.findall(r'(slo:sli_error:ratio_rate\w+)\{slo="(\w+)"\}', rule["expr"]):
                assert (name, objective) in recorded, f"{rule['alert']} reads {name} for {objective}: not recorded"


def test_each_recording_rule_is_its_objectives_bad_share_over_its_window():
    """``(total - good) / total`` over the rule's own window, on both sides."""
    for rule in _rules():
        if "record" in rule:
            window = rule["record"].removeprefix("slo:sli_error:ratio_rate")
            assert set(re.findall(r"\[(\w+)\]", rule["expr"])) == {window}, rule["record"]
            assert rule["expr"].count("\n/\n") == 1


def test_the_documents_give_the_codes_objectives_and_thresholds():
    """docs/slo.md states each promise and budget; docs/alerts.md's table gives each page's 1 h threshold."""
    doc, runbook = DOC.read_text(), RUNBOOK.read_text()
    for objective in slo.SLOS:
        assert objective.promise in doc
        assert f"{_percent(objective.budget)} of" in doc
        page = next(line for line in runbook.splitlines() if line.startswith(f"| [{objective.alert}FastBurn]"))
        assert f"over {_percent(14.4 * objective.budget)} of" in page, page
        ticket = next(line for line in runbook.splitlines() if line.startswith(f"| [{objective.alert}SlowBurn]"))
        assert f"over {_percent(3 * objective.budget)} " in ticket, ticket
