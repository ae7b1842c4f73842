"""A pool slot's saved state, in-process against real files: what a replacement child adds to each export, what
it does with a file it cannot read, and the private folder it insists on (``observability.telemetry.pool_slots``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
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
from structlog.testing import capture_logs

from observability.telemetry import pool_slots
from observability.telemetry.pool_slots import PoolSlot

RESOURCE = Resource.create({"service.instance.id": "celery@host-slot0"})
CUMULATIVE = AggregationTemporality.CUMULATIVE
ECHO = {"task": "echo", "queue": "q"}


def export(finished: dict[str, int], durations: list[float], backlog: int = 7) -> MetricsData:
    """One collection of a child: a counter per task, a histogram of echo's durations, a gauge."""
    counter = Sum(
        [NumberDataPoint({"task": task, "queue": "q"}, 10, 20, n) for task, n in finished.items()], CUMULATIVE, True
    )
    bounds = [0.1, 1.0]
    buckets = [sum(1 for d in durations if d <= 0.1), sum(1 for d in durations if 0.1 < d <= 1), 0]
    point = HistogramDataPoint(ECHO, 10, 20, len(durations), sum(durations), buckets, bounds, min(durations),
                               max(durations), [])  # fmt: skip
    metrics = [
        Metric("celery.tasks.finished", "", "{task}", counter),
        Metric("celery.task.duration", "", "s", Histogram([point], CUMULATIVE)),
        Metric("celery.queue.backlog", "", "{message}", Gauge([NumberDataPoint({}, 10, 20, backlog)])),
    ]
    scope = ScopeMetrics(InstrumentationScope("marketplace"), metrics, "")
    return MetricsData([ResourceMetrics(RESOURCE, [scope], "")])


def points(data: MetricsData, name: str) -> dict[str, object]:
    [metric] = [m for m in data.resource_metrics[0].scope_metrics[0].metrics if m.name == name]
    return {str(p.attributes.get("task")): p for p in metric.data.data_points}  # type: ignore[union-attr]


def test_a_replacement_child_goes_on_from_its_predecessors_last_export(tmp_path: Path):
    """The first child's last export is saved; the next child in the slot adds it to each of its sums and
    histograms, and still exports a series it has not touched itself. A gauge is the present: not carried."""
    first = PoolSlot(tmp_path, "celery@host", 0)
    first.continued(export({"echo": 5, "flaky": 2}, [0.05, 0.5]), RESOURCE)

    second = PoolSlot(tmp_path, "celery@host", 0)
    assert second.instance_id == "celery@host-slot0"
    data = second.continued(export({"echo": 3}, [0.05], backlog=1), RESOURCE)

    finished = points(data, "celery.tasks.finished")
    assert {task: p.value for task, p in finished.items()} == {"echo": 8, "flaky": 2}  # type: ignore[attr-defined]
    duration = points(data, "celery.task.duration")["echo"]
    assert (duration.count, duration.bucket_counts, duration.max) == (3, [2, 1, 0], 0.5)  # type: ignore[attr-defined]
    assert points(data, "celery.queue.backlog")["None"].value == 1  # type: ignore[attr-defined]

    # And the third child goes on from the second's export, not from the first's alone.
    third = PoolSlot(tmp_path, "celery@host", 0).continued(export({"echo": 1}, [2.0]), RESOURCE)
    assert points(third, "celery.tasks.finished")["echo"].value == 9  # type: ignore[attr-defined]
    assert [p.name for p in tmp_path.iterdir()] == ["slot0.json"]  # no temporary file left behind


def test_an_unreadable_slot_file_starts_the_slot_from_zero(tmp_path: Path):
    """A damaged file (a disk full mid-write of something else) is said in one line, and the child counts on."""
    for damaged in ("{not json", '{"version": 1, "metrics": [{"scope": "marketplace"}]}', "[]"):
        (tmp_path / "slot1.json").write_text(damaged)
        with capture_logs() as logs:
            data = PoolSlot(tmp_path, "celery@host", 1).continued(export({"echo": 4}, [0.05]), RESOURCE)
        assert [e["event"] for e in logs] == ["telemetry.pool_slot_unreadable"], damaged
        assert points(data, "celery.tasks.finished")["echo"].value == 4  # type: ignore[attr-defined]


def test_the_slot_files_live_in_a_folder_of_this_user_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Another user able to write the folder could forge the counts a child starts from: refused, and the
    children export as sources of their own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = pool_slots.node_dir("celery@host")
    assert folder is not None and folder.parent.stat().st_mode & 0o777 == 0o700
    folder.parent.chmod(0o777)
    assert pool_slots.node_dir("celery@host") is None
