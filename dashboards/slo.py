"""The service level objectives as code: each SLO's good and total events in PromQL, and from them the
recording rules and the multi-window, multi-burn-rate alerts of ``dashboards/alerts/slo.yml`` (the four windows
of Google's SRE workbook, chapter "Alerting on SLOs", as Sloth and Pyrra generate them) and the dashboard row of
their error budgets.

``python -m dashboards.generate`` writes ``slo.yml`` with the dashboards; ``--check`` fails when it is stale.
The objectives, and why these, are in ``docs/slo.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from dashboards.spec import Panel, Row, Step, Target, above

__all__ = ["BURN_ALERTS", "PERIOD", "SLOS", "WINDOWS", "BurnAlert", "Slo", "budget_row", "error_ratio", "rules_yaml"]

#: The period the error budget is counted over (the workbook's), in the alert texts and the budget panels.
PERIOD = "30d"


@dataclass(frozen=True)
class Slo:
    """An objective: ``objective`` of the events of ``total`` are among those of ``good`` over ``PERIOD``.

    ``good`` and ``total`` are per-second rates over ``{window}`` (a placeholder the rules fill in), each
    summed over processes and with a fallback to 0 where an event kind may not have been exported yet."""

    name: str
    #: Prefix of the two alert names: ``<alert>FastBurn`` (page), ``<alert>SlowBurn`` (ticket).
    alert: str
    title: str
    #: The promise in words, as the alert texts and the dashboard show it.
    promise: str
    #: What a bad event is, for the alert's description: "... of <bad> ...".
    bad: str
    objective: float
    good: str
    total: str

    @property
    def budget(self) -> float:
        """The share of events allowed to be bad over the period."""
        return round(1 - self.objective, 10)


@dataclass(frozen=True)
class BurnAlert:
    """Fires while the error ratio exceeds ``burn`` times the budget over both a long and a short window: the long
    window makes it significant (``burn`` x long window of budget spent), the short one makes it stop soon after
    the cause does."""

    long: str
    short: str
    burn: float


#: The workbook's table for a 30-day budget: a page when 2 % of it goes in an hour or 5 % in six hours, a ticket
#: when 10 % goes in a day or 10 % in three days.
BURN_ALERTS = {
    "FastBurn": ("critical", (BurnAlert("1h", "5m", 14.4), BurnAlert("6h", "30m", 6))),
    "SlowBurn": ("warning", (BurnAlert("1d", "2h", 3), BurnAlert("3d", "6h", 1))),
}
#: Every window an alert reads, plus the period for the budget panels.
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", PERIOD)

_ACTIVATION_LAG = "promotions_activation_lag_seconds"
_DELIVERY_LAG = "notifications_delivery_lag_seconds"
#: A histogram's ``le`` label as the OTLP bridge and the Collector write it ("1") and as Prometheus 3 normalises
#: classic histograms ("1.0").
_LE_1, _LE_60 = 'le=~"1|1.0"', 'le=~"60|60.0"'

SLOS = (
    Slo(
        name="promo_activation",
        alert="PromoActivationSLO",
        title="Promo activation",
        promise="99% of promos go live within 1 s of their start",
        bad="promos activated more than 1 s after their start",
        objective=0.99,
        good=f"sum(rate({_ACTIVATION_LAG}_bucket{{{_LE_1}}}[{{window}}]))",
        total=f"sum(rate({_ACTIVATION_LAG}_count[{{window}}]))",
    ),
    Slo(
        name="notification_delivery",
        alert="NotificationDeliverySLO",
        title="Notification delivery",
        promise="99.9% of notifications are sent within 60 s of their promo going live",
        bad="notifications sent more than 60 s after their promo went live, or given up on",
        objective=0.999,
        # Given up on (attempts used up, a permanent error) is bad too: a provider down from the start has sent
        # nothing, so every series may be missing - each side falls back to 0 and the ratio to 0/0 (no data).
        good=f"(sum(rate({_DELIVERY_LAG}_bucket{{{_LE_60}}}[{{window}}])) or vector(0))",
        total=(
            f"(sum(rate({_DELIVERY_LAG}_count[{{window}}])) or vector(0))"
            " + (sum(rate(notifications_failed_total[{window}])) or vector(0))"
        ),
    ),
)


def error_ratio(slo: Slo, window: str) -> str:
    """The share of bad events over ``window``; 0/0 (NaN, so no alert and a gap in a panel) when none happened."""
    total, good = (side.replace("{window}", window) for side in (slo.total, slo.good))
    return f"({total} - {good})\n/\n({total})"


def _recorded(window: str) -> str:
    return f"slo:sli_error:ratio_rate{window}"


def _selector(slo: Slo, window: str) -> str:
    return f'{_recorded(window)}{{slo="{slo.name}"}}'


def _number(value: float) -> str:
    return f"{value:g}"


def _alert(slo: Slo, suffix: str, severity: str, pairs: tuple[BurnAlert, ...]) -> dict[str, Any]:
    clauses = [
        f"(\n  {_selector(slo, p.long)} > ({_number(p.burn)} * {_number(slo.budget)})\n"
        f"  and\n  {_selector(slo, p.short)} > ({_number(p.burn)} * {_number(slo.budget)})\n)"
        for p in pairs
    ]
    spent = ", ".join(f"{_number(p.burn)}x over {p.long} and {p.short}" for p in pairs)
    speed = "fast" if severity == "critical" else "steadily"
    return {
        "alert": f"{slo.alert}{suffix}",
        "expr": "\nor\n".join(clauses) + "\n",
        "labels": {"severity": severity, "slo": slo.name},
        "annotations": {
            "summary": f"{slo.title} SLO: the error budget is burning {speed}",
            "description": (
                f"{{{{ $value | humanizePercentage }}}} of {slo.bad} over the alert's long window; the objective "
                f"({slo.promise}, over {PERIOD}) allows {_number(slo.budget * 100)}%. Burn-rate thresholds: {spent}."
            ),
            "runbook_url": f"docs/alerts.md#{slo.alert.lower()}{suffix.lower()}",
        },
    }


class _Literal(str):
    """A string dumped as a YAML literal block, so multi-line PromQL reads as written."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)

_HEADER = """\
# GENERATED by `python -m dashboards.generate` from dashboards/slo.py - edit that, not this file.
# Service level objectives (docs/slo.md): recording rules of each SLO's error ratio over the windows its alerts
# read, and multi-window, multi-burn-rate alerts (Google's SRE workbook; Sloth and Pyrra generate the same
# shape): a page (critical) when the error ratio is 14.4x the budget over 1h and 5m, or 6x over 6h and 30m;
# a ticket (warning) at 3x over 1d and 2h, or 1x over 3d and 6h. No `for`: the short window is the debounce, and
# it ends the alert soon after the cause. No event in a window: 0/0, no data, no alert (CeleryBeatEntryMissed
# and the queue alerts watch for work that stopped). Runbooks: docs/alerts.md; tests: tests/slo.test.yml.
"""


def rules_yaml() -> str:
    """The text of ``dashboards/alerts/slo.yml``."""
    rules: list[dict[str, Any]] = []
    for slo in SLOS:
        rules += [
            {
                "record": _recorded(window),
                "expr": _Literal(error_ratio(slo, window) + "\n"),
                "labels": {"slo": slo.name},
            }
            for window in WINDOWS
        ]
    for slo in SLOS:
        for suffix, (severity, pairs) in BURN_ALERTS.items():
            alert = _alert(slo, suffix, severity, pairs)
            alert["expr"] = _Literal(alert["expr"])
            rules.append(alert)
    body = yaml.dump(
        {"groups": [{"name": "slo", "rules": rules}]}, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True
    )
    return _HEADER + body


# --- the dashboard row ------------------------------------------------------------------------------------------
#: Budget left over the period: red once spent, orange under a quarter left.
_BUDGET_LEFT = (Step("red"), Step("orange", 0), Step("green", 0.25))


def budget_row() -> Row:
    """Per SLO: the share of its 30-day error budget left, and its burn rate over the page's two long windows."""
    panels: list[Panel] = []
    for slo in SLOS:
        fast = f"{slo.alert}FastBurn"
        panels.append(
            Panel(
                f"{slo.title}: error budget left ({PERIOD})",
                "stat",
                (Target(f"1 - {_selector(slo, PERIOD)} / {_number(slo.budget)}", "left", instant=True),),
                "percentunit",
                f"Objective: {slo.promise}. The share of the {PERIOD} error budget "
                f"({_number(slo.budget * 100)}% of events) not yet spent; below 0 the objective is missed. No data: "
                f"no event in {PERIOD}.",
                _BUDGET_LEFT,
                red=f"the objective is missed over the last {PERIOD}: {slo.bad}. Look at the burn rate beside this "
                "panel for when it went, then at the runbooks of the two SLO alerts.",
                alert=fast,
                width=6,
            )
        )
        panels.append(
            Panel(
                f"{slo.title}: burn rate",
                "timeseries",
                tuple(
                    Target(f"{_selector(slo, window)} / {_number(slo.budget)}", f"over {window}")
                    for window in ("1h", "6h")
                ),
                "short",
                "How fast the error budget goes: 1 spends it exactly over the period; 14.4 over 1 h (with 5 m "
                "agreeing) pages, as does 6 over 6 h (with 30 m); 3 over a day or 1 over three days opens a ticket.",
                above(6, 14.4),
                red=f"the budget is going fast: {slo.bad}. Follow the runbook of {fast}.",
                alert=fast,
                width=6,
                min=0,
            )
        )
    return Row(f"Service level objectives: error budget ({PERIOD})", tuple(panels))
