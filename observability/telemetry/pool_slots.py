"""A stable metric source per prefork pool slot: a worker child exports as ``<nodename>-slot<N>`` and continues the
cumulative sums and histograms its predecessor in slot N exported, so recycling children adds no series.

Without it every child was a source of its own (``service.instance.id``): 600 tasks with 2 children recycled
every 25 made 26 worker sources, and ``rate()`` missed the first increment of each new series. Now a worker is
its main process plus one source per slot, however often children recycle:

- Billiard numbers a pool's processes ``0..concurrency-1`` and gives a replacement the index of the child it
  replaces (``Pool._avail_index``), only once that child has exited: one process per slot at a time.
- At each export - the periodic ones and the last one at exit (``worker_process_shutdown``) - a child writes what
  it exports (its monotonic sums and histograms, predecessors' counts included) to its slot's JSON file, before
  sending, atomically (a new file renamed over the old). The next child in the slot loads it and adds it to
  every point it exports: the series goes on from where it was, no reset, no count twice.
- A child killed without a clean exit (SIGKILL, OOM) leaves the file of its last export: its successor goes on
  from that, and what the dead child counted since (at most one export interval) is lost - as it was before,
  since it was never exported. Never counted twice: the file holds exactly what was exported.
- Gauges are not carried: they are the present, not a sum.
- The save costs ~2 ms of the export thread per export (41 series, 3.6 KB; 2-core VM, shared), once per
  ``OTEL_METRIC_EXPORT_INTERVAL``: nothing on a task's path.
- Node names must be unique per host, as Celery asks anyway: two workers of one name would share slot files.

The files live in ``$TMPDIR/marketplace-pool-slots-<uid>/<nodename>/`` (mode 0700: only this user reads or
forges them). The worker's main process empties its node's folder when it starts, so a restarted worker starts
its slots from zero (a counter reset, as any restarted process makes), and removes it when it stops.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["PoolSlot", "forget_node", "node_dir", "remove_node_dir", "slot_index"]

log = structlog.get_logger("observability.task")

#: Bumped when the file's shape changes: a file of another version is not read (the slot starts from zero).
STATE_VERSION = 1

Point = NumberDataPoint | HistogramDataPoint
#: (scope name, metric name) -> the metric's kind, unit and description, and its points by attribute set
_MetricKey = tuple[str, str]
_AttributesKey = tuple[tuple[str, Any], ...]


def slot_index() -> int | None:
    """This process's index in its billiard pool, or None outside a pool child (a solo or threads worker)."""
    from billiard.process import current_process

    index = getattr(current_process(), "index", None)
    return index if isinstance(index, int) else None


def _base_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"marketplace-pool-slots-{os.getuid()}"


def node_dir(nodename: str) -> Path | None:
    """The private folder of ``nodename``'s slot files, made if missing; None (and a warning) when the base folder
    is not this user's alone - another user could forge the counts a child starts from."""
    base = _base_dir()
    base.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        log.warning(
            "telemetry.pool_slots_unsafe_dir",
            path=str(base),
            detail="not a folder of this user's alone (mode 0700): each pool child exports as a source of its own",
        )
        return None
    path = base / quote(nodename, safe="")
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def forget_node(nodename: str) -> Path | None:
    """Empty ``nodename``'s slot files (the worker's main process, at start): its children start from zero."""
    path = node_dir(nodename)
    if path is not None:
        for stale in path.iterdir():
            stale.unlink(missing_ok=True)
    return path


def remove_node_dir(path: Path) -> None:
    """Remove a stopped worker's slot folder (its children have exited)."""
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class _Metric:
    kind: str  # "sum" (monotonic, cumulative) | "histogram" (cumulative)
    unit: str
    description: str
    points: dict[_AttributesKey, Point]


def _key(attributes: Any) -> _AttributesKey:
    return tuple(sorted(dict(attributes or {}).items()))


def _carried_kind(metric: Metric) -> str | None:
    data = metric.data
    cumulative = getattr(data, "aggregation_temporality", None) == AggregationTemporality.CUMULATIVE
    if isinstance(data, Sum) and data.is_monotonic and cumulative:
        return "sum"
    return "histogram" if isinstance(data, Histogram) and cumulative else None


def _added(point: Point, base: Point | None) -> Point:
    """``point`` continued from ``base`` (the same series' state the slot's predecessors exported)."""
    if base is None:
        return point
    start = min(point.start_time_unix_nano, base.start_time_unix_nano)
    if isinstance(point, NumberDataPoint) and isinstance(base, NumberDataPoint):
        return replace(point, value=point.value + base.value, start_time_unix_nano=start)
    if isinstance(point, HistogramDataPoint) and isinstance(base, HistogramDataPoint):
        if tuple(point.explicit_bounds) != tuple(base.explicit_bounds):
            return point  # cannot happen within one worker's life: its children run the same code
        return replace(
            point,
            start_time_unix_nano=start,
            count=point.count + base.count,
            sum=point.sum + base.sum,
            bucket_counts=[a + b for a, b in zip(point.bucket_counts, base.bucket_counts, strict=True)],
            min=min(point.min, base.min),
            max=max(point.max, base.max),
        )
    return point


def _encode(point: Point) -> dict[str, Any]:
    attributes = [[key, value] for key, value in _key(point.attributes)]
    if isinstance(point, NumberDataPoint):
        return {"attributes": attributes, "start": point.start_time_unix_nano, "value": point.value}
    return {
        "attributes": attributes,
        "start": point.start_time_unix_nano,
        "count": point.count,
        "sum": point.sum,
        "bucket_counts": list(point.bucket_counts),
        "explicit_bounds": list(point.explicit_bounds),
        "min": point.min,
        "max": point.max,
    }


def _decode(kind: str, raw: dict[str, Any]) -> Point:
    attributes = {str(key): value for key, value in raw["attributes"]}
    if kind == "sum":
        return NumberDataPoint(attributes, int(raw["start"]), int(raw["start"]), raw["value"], [])
    return HistogramDataPoint(
        attributes,
        int(raw["start"]),
        int(raw["start"]),
        int(raw["count"]),
        float(raw["sum"]),
        [int(n) for n in raw["bucket_counts"]],
        [float(b) for b in raw["explicit_bounds"]],
        float(raw["min"]),
        float(raw["max"]),
        [],
    )


class PoolSlot:
    """Slot ``index`` of ``nodename``'s pool: its ``service.instance.id``, and the sums and histograms to go on
    from. ``continued`` is called by the metric exporter with each export's data."""

    def __init__(self, folder: Path, nodename: str, index: int) -> None:
        self.instance_id = f"{nodename}-slot{index}"
        self._path = folder / f"slot{index}.json"
        self._baseline: dict[_MetricKey, _Metric] = self._load()

    def _load(self) -> dict[_MetricKey, _Metric]:
        try:
            raw = json.loads(self._path.read_text())
            if raw.get("version") != STATE_VERSION:
                return {}
            return {
                (m["scope"], m["name"]): _Metric(
                    m["kind"],
                    m["unit"],
                    m["description"],
                    {_key(point.attributes): point for point in (_decode(m["kind"], p) for p in m["points"])},
                )
                for m in raw["metrics"]
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # unreadable, or not our shape
            log.warning("telemetry.pool_slot_unreadable", path=str(self._path), error=repr(error),
                        detail="this slot's sums start from zero: its series show a counter reset")  # fmt: skip
            return {}

    def continued(self, metrics_data: MetricsData, resource: Resource) -> MetricsData:
        """``metrics_data`` with the predecessors' counts added to each monotonic sum and histogram, and their
        series this child has not touched yet; what it returns is saved first, for the slot's next child."""
        now = time.time_ns()
        state = {key: _Metric(m.kind, m.unit, m.description, dict(m.points)) for key, m in self._baseline.items()}
        resources = list(metrics_data.resource_metrics) or [ResourceMetrics(resource, [], "")]
        exported: set[_MetricKey] = set()
        out: list[ResourceMetrics] = []
        for resource_metrics in resources:
            scopes = []
            for scope_metrics in resource_metrics.scope_metrics:
                metrics = []
                for metric in scope_metrics.metrics:
                    kind = _carried_kind(metric)
                    key = (scope_metrics.scope.name, metric.name)
                    if kind is None:
                        metrics.append(metric)
                        continue
                    exported.add(key)
                    merged = state.setdefault(key, _Metric(kind, metric.unit or "", metric.description or "", {}))
                    for point in metric.data.data_points:
                        if isinstance(point, NumberDataPoint | HistogramDataPoint):  # _carried_kind's: always
                            attributes = _key(point.attributes)
                            merged.points[attributes] = _added(point, merged.points.get(attributes))
                    metrics.append(self._metric(metric.name, merged, now, template=metric))
                for key, merged in state.items():
                    if key[0] == scope_metrics.scope.name and key not in exported:
                        exported.add(key)
                        metrics.append(self._metric(key[1], merged, now))
                scopes.append(replace(scope_metrics, metrics=metrics))
            out.append(replace(resource_metrics, scope_metrics=scopes))
        for (scope, name), merged in state.items():
            if (scope, name) not in exported:  # a scope this collection does not have at all
                scope_metrics = ScopeMetrics(InstrumentationScope(scope), [self._metric(name, merged, now)], "")
                out[0] = replace(out[0], scope_metrics=[*out[0].scope_metrics, scope_metrics])
        self._save(state)
        return MetricsData(out)

    @staticmethod
    def _metric(name: str, merged: _Metric, now: int, template: Metric | None = None) -> Metric:
        points = [replace(p, time_unix_nano=now) if p.time_unix_nano < now else p for p in merged.points.values()]
        data: Sum | Histogram
        if merged.kind == "sum":
            data = Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True)  # type: ignore[arg-type]
        else:
            data = Histogram(points, AggregationTemporality.CUMULATIVE)  # type: ignore[arg-type]
        if template is not None:
            return replace(template, data=data)
        return Metric(name=name, description=merged.description, unit=merged.unit, data=data)

    def _save(self, state: dict[_MetricKey, _Metric]) -> None:
        document = {
            "version": STATE_VERSION,
            "metrics": [
                {"scope": scope, "name": name, "kind": m.kind, "unit": m.unit, "description": m.description,
                 "points": [_encode(p) for p in m.points.values()]}
                for (scope, name), m in state.items()
            ],
        }  # fmt: skip
        # Written beside the file and renamed over it: a child killed mid-write leaves the previous export's.
        handle, temporary = tempfile.mkstemp(dir=self._path.parent, prefix=self._path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                # dumps, not dump: json.dump streams through the pure-Python encoder, 5x slower here.
                file.write(json.dumps(document))
            os.replace(temporary, self._path)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            log.warning("telemetry.pool_slot_unsaved", path=str(self._path), error=str(error),
                        detail="the slot's next child starts from its previous save")  # fmt: skip
