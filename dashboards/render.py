"""Turns a ``dashboards.spec.Board`` into Grafana dashboard JSON with Grafana's own typed builders
(``grafana-foundation-sdk``, generated from Grafana's schemas), so the JSON has the shape Grafana expects.

Layout is the SDK's: panels fill rows of 24 columns left to right, each row of the spec starts a Grafana row.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models

from dashboards.spec import Board, Panel, Step, Variable

__all__ = ["DATASOURCE", "render"]

#: Provisioned with this uid (``dashboards/grafana/provisioning/``); Tempo links come from its exemplar settings.
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="prometheus")
_REFRESH = "30s"
_TIME_FROM = "now-1h"
_PanelBuilder = timeseries.Panel | stat.Panel | bargauge.Panel


def render(board: Board) -> str:
    """The dashboard's JSON text, keys sorted, as committed under ``dashboards/grafana/json/``."""
    builder = (
        dashboard.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(list(board.tags))
        .refresh(_REFRESH)
        .time(_TIME_FROM, "now")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .links([_dashboard_link(title, uid) for title, uid in board.links])
    )
    for variable in board.variables:
        builder.with_variable(_variable(variable))
    panel_id = 0
    has_queue = any(variable.name == "queue" for variable in board.variables)
    for row in board.rows:
        panel_id += 1
        builder.with_row(dashboard.Row(row.title).id(panel_id))
        for panel in row.panels:
            panel_id += 1
            builder.with_panel(_panel(panel, panel_id, has_queue=has_queue))
    return JSONEncoder(sort_keys=True, indent=2).encode(builder.build()) + "\n"


def _dashboard_link(title: str, uid: str) -> dashboard.DashboardLink:
    # Carries the variables (queue, task) and the time range, so "Per task" opens on what was being looked at.
    return (
        dashboard.DashboardLink(title)
        .type(models.DashboardLinkType.LINK)
        .url(f"/d/{uid}")
        .include_vars(True)
        .keep_time(True)
    )


def _variable(variable: Variable) -> dashboard.QueryVariable:
    builder = (
        dashboard.QueryVariable(variable.name)
        .label(variable.label)
        .query(variable.query)
        .datasource(DATASOURCE)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
    )
    if variable.include_all:
        builder.include_all(True).multi(True).all_value(".*")
    return builder


def _panel(spec: Panel, panel_id: int, *, has_queue: bool) -> _PanelBuilder:
    builder = _visualisation(spec)
    builder.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE)
    builder.span(spec.width).height(spec.height).unit(spec.unit).thresholds(_thresholds(spec.steps))
    for ref_id, target in zip(string.ascii_uppercase, spec.targets, strict=False):
        query = prometheus.Dataquery().ref_id(ref_id).expr(target.expr).legend_format(target.legend)
        query.datasource(DATASOURCE)
        if target.exemplar:
            query.exemplar(True)
        builder.with_target(query.instant() if target.instant else query.range())
    if spec.min is not None:
        builder.min(spec.min)
    if spec.max is not None:
        builder.max(spec.max)
    if spec.task_links:
        builder.data_links([_task_link(has_queue=has_queue)])
    for name, color in spec.colors:
        fixed = {"mode": "fixed", "fixedColor": color}
        builder.override_by_name(name, [models.DynamicConfigValue(id_val="color", value=fixed)])
    return builder


def _visualisation(spec: Panel) -> _PanelBuilder:
    thresholded = len(spec.steps) > 1
    if spec.kind == "stat":
        return (
            stat.Panel()
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .graph_mode(common_models.BigValueGraphMode.AREA)
            .text_mode(common_models.BigValueTextMode.AUTO)
            # A stat without thresholds is not painted green: green would claim a verdict it does not make.
            .color_mode(
                common_models.BigValueColorMode.BACKGROUND if thresholded else common_models.BigValueColorMode.NONE
            )
        )
    if spec.kind == "bargauge":
        return (
            bargauge.Panel()
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .orientation(common_models.VizOrientation.HORIZONTAL)
            .display_mode(common_models.BarGaugeDisplayMode.GRADIENT)
            .show_unfilled(True)
        )
    panel = (
        timeseries.Panel()
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
        .fill_opacity(30 if spec.stacked else 10)
        .line_width(1)
        .show_points(common_models.VisibilityMode.NEVER)
    )
    if spec.stacked:
        panel.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL))
    if thresholded:
        # Thresholds drawn as dashed lines: the series keep their colours, the limit stays visible.
        panel.thresholds_style(common.GraphThresholdsStyleConfig().mode(common_models.GraphThresholdsStyleMode.DASHED))
    return panel


def _thresholds(steps: Sequence[Step]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=step.value, color=step.color) for step in steps])
    )


def _task_link(*, has_queue: bool) -> dashboard.DashboardLink:
    # Grafana data links interpolate the clicked series' labels; the queue selection and time range follow.
    queue = "&${queue:queryparam}" if has_queue else ""
    return dashboard.DashboardLink("Open ${__field.labels.task}").url(
        "/d/celery-task?var-task=${__field.labels.task}" + queue + "&${__url_time_range}"
    )
