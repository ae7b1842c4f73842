"""Bounded metric sources under recycling, against a real prefork worker exporting to a local OTLP receiver: each
pool slot is one source that goes on from the sums of the children it replaced (``observability.telemetry.
pool_slots``), so recycled or killed children add no series, reset none and count nothing twice."""

from __future__ import annotations

import os
import signal
import stat
import tempfile
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from urllib.parse import quote

import pytest

from tests import tasks
from tests.conftest import RESULT_TIMEOUT, WorkerProcess, wait_for
from tests.otlp_receiver import OtlpReceiver, Point

pytestmark = [pytest.mark.django_db(transaction=True)]


def slotted_worker(
    start_worker: Callable[..., WorkerProcess], otlp: OtlpReceiver, queue: str, *extra: str
) -> WorkerProcess:
    """A worker of 2 children on ``queue`` exporting its metrics every 200 ms."""
    return start_worker(
        "-Q", queue, *extra,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "200"},
    )  # fmt: skip


def worker_sources(otlp: OtlpReceiver) -> set[str]:
    return {
        str(p.resource["service.instance.id"])
        for p in list(otlp.points)
        if p.resource.get("service.name") == "marketplace-worker"
    }


def finished(otlp: OtlpReceiver, queue: str) -> float:
    return otlp.total("celery.tasks.finished", task="tests.pid", queue=queue, outcome="succeeded")


def resets(otlp: OtlpReceiver, metric: str) -> list[tuple[str, Point, Point]]:
    """Each fall of a cumulative series between two exports of its source: what Prometheus' resets() counts."""
    series: dict[tuple[str, tuple[tuple[str, object], ...]], list[Point]] = defaultdict(list)
    for point in list(otlp.points):
        if point.metric == metric:
            key = (str(point.resource["service.instance.id"]), tuple(sorted(point.attributes.items())))
            series[key].append(point)
    falls = []
    for (source, _), points in series.items():
        ordered = sorted(points, key=lambda p: p.export)
        values = [(float(p.count if p.count is not None else p.value or 0), p) for p in ordered]
        falls += [(source, a, b) for (va, a), (vb, b) in pairwise(values) if vb < va]
    return falls


def test_recycled_children_keep_the_worker_at_one_source_per_slot(start_worker, otlp_receiver):
    """100 tasks, 5 per child: 20 children go through 2 slots. The worker stays 3 sources (main process and a
    slot each), the task counter sums to exactly 100 (no recycled child's last counts lost, none counted twice)
    and no series ever falls (no counter reset)."""
    worker = slotted_worker(start_worker, otlp_receiver, "slots", "--max-tasks-per-child=5")
    results = [tasks.pid.apply_async(queue="slots") for _ in range(100)]
    children = {result.get(timeout=RESULT_TIMEOUT) for result in results}
    assert len(children) >= 20  # 5 tasks each at most

    wait_for(lambda: finished(otlp_receiver, "slots") == 100, timeout=30, what="the 100 runs counted")
    sources = worker_sources(otlp_receiver)
    assert {s for s in sources if s.startswith(worker.name)} == {f"{worker.name}-slot0", f"{worker.name}-slot1"}
    assert len(sources) == 3  # and the main process
    assert otlp_receiver.total("celery.task.duration", task="tests.pid", queue="slots") == 100
    assert otlp_receiver.total("celery.tasks.started", task="tests.pid", queue="slots") == 100
    for metric in ("celery.tasks.finished", "celery.tasks.started", "celery.task.duration"):
        assert resets(otlp_receiver, metric) == [], metric


def test_a_killed_child_is_continued_from_its_last_export(start_worker, otlp_receiver):
    """A child killed with SIGKILL (no exit handler runs) after its counts were exported: the child that takes
    its slot goes on from the slot's last export - nothing counted twice, no reset, no new source. One slot, so
    the replacement runs every task after the kill."""
    worker = slotted_worker(start_worker, otlp_receiver, "slots-killed", "--concurrency=1")
    children = {tasks.pid.apply_async(queue="slots-killed").get(timeout=RESULT_TIMEOUT) for _ in range(10)}
    wait_for(lambda: finished(otlp_receiver, "slots-killed") == 10, timeout=30, what="the first 10 runs exported")
    assert f"{worker.name}-slot0" in worker_sources(otlp_receiver)
    [killed] = children
    os.kill(killed, signal.SIGKILL)

    after = {tasks.pid.apply_async(queue="slots-killed").get(timeout=RESULT_TIMEOUT) for _ in range(10)}
    assert killed not in after
    wait_for(lambda: finished(otlp_receiver, "slots-killed") == 20, timeout=30, what="all 20 runs counted")
    sources = worker_sources(otlp_receiver)
    assert f"{worker.name}-slot0" in sources and len(sources) == 2  # the slot and the main process
    assert resets(otlp_receiver, "celery.tasks.finished") == []

    # The slot's state is this user's alone, and goes when the worker stops.
    folder = Path(tempfile.gettempdir()) / f"marketplace-pool-slots-{os.getuid()}" / quote(worker.name, safe="")
    assert stat.S_IMODE((folder / "slot0.json").stat().st_mode) == 0o600
    worker.stop()
    assert not folder.exists()
