"""What a dashboard is made of, independent of Grafana's JSON: boards of rows of panels, each panel with its
queries, unit, thresholds and the words an on-call engineer needs (what it shows, what red means, what to do).

``dashboards.render`` turns these into Grafana JSON; ``dashboards.readme`` into the panel reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "NO_THRESHOLD",
    "Board",
    "Panel",
    "Row",
    "Step",
    "Target",
    "Variable",
    "above",
    "below",
    "runbook",
]


@dataclass(frozen=True)
class Step:
    """From ``value`` up (``None``: from minus infinity) the panel shows ``color``."""

    color: str
    value: float | None = None


#: One base step only. Written out because Grafana gives a panel without thresholds its default ones
#: (red from 80), which would paint a throughput of 80 tasks/s red.
NO_THRESHOLD = (Step("green"),)


def above(warn: float | None, red: float) -> tuple[Step, ...]:
    """Green, orange from ``warn`` (if any), red from ``red``: for values that hurt as they grow."""
    orange = () if warn is None else (Step("orange", warn),)
    return Step("green"), *orange, Step("red", red)


def below(ok: float) -> tuple[Step, ...]:
    """Red below ``ok``, green from it: for values that hurt when they fall (workers up)."""
    return Step("red"), Step("green", ok)


def runbook(alert: str) -> str:
    """The runbook of a Prometheus alert (``dashboards/alerts/``): its section of docs/alerts.md, the anchor
    GitHub derives from the alert's name, as the rule's ``runbook_url`` says."""
    return f"docs/alerts.md#{alert.lower()}"


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel. ``instant`` for a single value over ``$__range``; ``exemplar`` where the
    histogram's samples carry trace ids (the Prometheus datasource turns them into links to Tempo)."""

    expr: str
    legend: str
    exemplar: bool = False
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    """A panel and its contract with the reader.

    ``red`` says what a red value means and what to do; a panel without thresholds instead says in
    ``no_threshold`` why no value of it is bad by itself. ``alert`` names the Prometheus alert that fires on
    what the panel shows red, if one does. ``task_links`` adds a data link from each series (which must carry
    a ``task`` label) to the per-task dashboard.
    """

    title: str
    kind: Literal["timeseries", "stat", "bargauge"]
    targets: tuple[Target, ...]
    unit: str
    shows: str
    steps: tuple[Step, ...] = NO_THRESHOLD
    red: str = ""
    no_threshold: str = ""
    alert: str = ""
    width: int = 12
    height: int = 8
    task_links: bool = False
    stacked: bool = False
    #: Fixed series colours by legend name (the outcomes keep one colour across panels and dashboards).
    colors: tuple[tuple[str, str], ...] = ()
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        thresholded = len(self.steps) > 1
        if thresholded != bool(self.red) or thresholded == bool(self.no_threshold):
            raise ValueError(f"{self.title!r}: thresholds need `red`; a panel without them needs `no_threshold`")

    @property
    def description(self) -> str:
        """The panel's description in Grafana (markdown)."""
        verdict = f"**Red:** {self.red}" if self.red else f"**No threshold:** {self.no_threshold}"
        alert = f"\n\nAlert: {self.alert}, runbook `{runbook(self.alert)}`." if self.alert else ""
        return f"{self.shows}\n\n{verdict}{alert}"


@dataclass(frozen=True)
class Row:
    """A titled band of panels, laid out left to right."""

    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    """A query variable over one label. ``include_all`` uses ``.*`` as the All value, so queries can always
    match with ``=~"$name"``."""

    name: str
    label: str
    query: str
    include_all: bool = True


@dataclass(frozen=True)
class Board:
    """A dashboard; ``uid`` is fixed, so URLs and links between dashboards never change."""

    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    variables: tuple[Variable, ...]
    rows: tuple[Row, ...]
    #: Dashboard links: (title, uid of the target dashboard); they carry the variables and the time range.
    links: tuple[tuple[str, str], ...] = ()

    @property
    def panels(self) -> tuple[Panel, ...]:
        return tuple(panel for row in self.rows for panel in row.panels)
