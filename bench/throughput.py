"""Task benchmarks against real workers: end-to-end and publish throughput, publish-to-start latency and
worker child memory, each for a bare ``celery.Task`` and for ``ObservableTask`` with everything on.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import redis

from bench.contrib import CONTRIB_ENV
from bench.harness import (
    BROKER_URL,
    RABBITMQ,
    REDIS_URL,
    ROOT,
    Sink,
    Worker,
    base_env,
    instrumented_env,
    percentile,
    rss_kib,
    wait_until,
)
from bench.tasks import COUNTER_KEY, LATENCY_KEY


def broker() -> redis.Redis:
    """The bench's Redis: the broker's queues on Redis, and on either broker the tasks' counters and results."""
    return redis.Redis.from_url(REDIS_URL)


def empty_broker() -> None:
    """Nothing left of an earlier run: the Redis database flushed and, on RabbitMQ, the task queue purged."""
    broker().flushdb()
    if RABBITMQ:
        from amqp.exceptions import NotFound
        from kombu import Connection

        with Connection(BROKER_URL) as connection, contextlib.suppress(NotFound):
            channel: Any = connection.default_channel  # py-amqp's Channel (kombu types it as StdChannel)
            channel.queue_purge("celery")


# redis-py's sync client is typed as possibly async: these helpers read its answers as what they are.
def done_count(client: redis.Redis) -> int:
    value: Any = client.get(COUNTER_KEY)
    return int(value or 0)


def latency_count(client: redis.Redis) -> int:
    value: Any = client.llen(LATENCY_KEY)
    return int(value)


def latency_values_ms(client: redis.Redis) -> list[float]:
    values: Any = client.lrange(LATENCY_KEY, 0, -1)
    return [float(v) * 1000 for v in values]


def variant_env(variant: str, sink: Sink) -> dict[str, str]:
    """``bare``, ``observable`` (everything on) or ``contrib`` (the reference: ``bench.contrib``)."""
    if variant == "observable":
        return instrumented_env(sink)
    return {**base_env(), CONTRIB_ENV: "1"} if variant == "contrib" else base_env()


def loglevel(variant: str) -> str:
    return "INFO" if variant == "observable" else "WARNING"


def publish(
    variant: str, env: Mapping[str, str], count: int, *, rate: float = 0.0, stamp: bool = False,
    countdown_spread: float = 0.0,
) -> float:  # fmt: skip
    """Run the producer subprocess; returns its ``.delay()`` calls per second (warm-up message excluded)."""
    return publish_figures(variant, env, count, rate=rate, stamp=stamp, countdown_spread=countdown_spread)[0]


def publish_figures(
    variant: str, env: Mapping[str, str], count: int, *, rate: float = 0.0, stamp: bool = False,
    countdown_spread: float = 0.0,
) -> tuple[float, float]:  # fmt: skip
    """Run the producer subprocess; returns its ``.delay()`` calls per second and per second of its CPU."""
    command = [sys.executable, "-m", "bench.publish", "--variant", variant, "--count", str(count)]
    if rate:
        command += ["--rate", str(rate)]
    if stamp:
        command.append("--stamp")
    if countdown_spread:
        command += ["--countdown-spread", str(countdown_spread)]
    done = subprocess.run(command, cwd=ROOT, env=dict(env), capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"publisher failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout)
    return float(figures["per_second"]), float(figures["per_cpu_second"])


def publish_run(variant: str, sink: Sink, count: int) -> tuple[float, float]:
    """Publish ``count`` messages into an emptied broker database, no worker running; returns ``.delay()`` calls
    per second and per CPU second (``publish_figures``)."""
    empty_broker()
    try:
        return publish_figures(variant, variant_env(variant, sink), count)
    finally:
        empty_broker()


def ping(worker: Worker, timeout: float = 60.0) -> None:
    from marketplace.celery import app

    def answered() -> bool:
        if not worker.alive():
            raise RuntimeError(f"worker exited; see {worker.log_path}")
        return bool(app.control.ping(destination=[worker.name], timeout=0.5))

    wait_until(answered, timeout=timeout, interval=0.2, what="the bench worker to answer ping")


def _done(client: redis.Redis, worker: Worker) -> int:
    if not worker.alive():
        raise RuntimeError(f"worker exited; see {worker.log_path}")
    return done_count(client)


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of ``pid`` from /proc: user + system."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / _TICK, (cutime + cstime) / _TICK


@dataclass(frozen=True)
class WorkerCpu:
    """CPU seconds so far of a worker's main process, of its pool children (exited ones included), and of each
    living child by pid."""

    main: float
    children: float
    per_child: dict[int, float]


def worker_cpu(worker: Worker) -> WorkerCpu:
    main, reaped = _cpu_seconds(worker.process.pid)
    per_child = {pid: _cpu_seconds(pid)[0] for pid in worker.children()}
    return WorkerCpu(main, reaped + sum(per_child.values()), per_child)


def busiest_child_share(before: WorkerCpu, after: WorkerCpu) -> float | None:
    """The busiest pool child's share of the children's CPU between two readings (0.5 = two children even), or
    None when the children changed in between (recycled): a new child's share says nothing.

    Why it is reported: with prefetch 1 and two children, the pool settles either in a lopsided regime (one
    child takes most tasks, the other mostly sleeps) or in an even one, and the lopsided one drains faster on two
    cores - fewer wake-ups and migrations. A run's throughput says which regime it fell into only with this."""
    if not after.per_child or after.per_child.keys() != before.per_child.keys():
        return None
    used = [after.per_child[pid] - before.per_child[pid] for pid in after.per_child]
    return max(used) / sum(used) if sum(used) > 0 else None


@dataclass
class ThroughputRun:
    publish_per_second: float
    end_to_end_per_second: float
    summary_lines: int
    #: CPU per task during the timed drain, microseconds: the main process, and the pool children together.
    main_cpu_us: float = 0.0
    child_cpu_us: float = 0.0
    #: See ``busiest_child_share``.
    busiest_child_share: float | None = None


def throughput_run(variant: str, sink: Sink, count: int, tag: str, extra: Sequence[str] = ()) -> ThroughputRun:
    """Pre-fill the queue with ``count`` messages (timed: the publish figure), then start a worker and time
    the drain from the first 2% done to the last, so worker start-up is not counted."""
    client = broker()
    empty_broker()
    env = variant_env(variant, sink)
    publish_rate = publish(variant, env, count)
    total = count + 1  # the producer's warm-up message
    worker = Worker(env, f"throughput-{variant}-{tag}", loglevel=loglevel(variant), extra=extra)
    try:
        first = max(1, total // 50)
        t0 = wait_until(lambda: _done(client, worker) >= first, timeout=120, what="the first tasks")
        c0 = done_count(client)
        cpu0 = worker_cpu(worker)
        t1 = wait_until(lambda: _done(client, worker) >= total, timeout=600, what="the queue to drain")
        cpu1 = worker_cpu(worker)
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    done = total - c0
    return ThroughputRun(
        publish_rate,
        done / (t1 - t0),
        log.count('"task.finished"'),
        (cpu1.main - cpu0.main) / done * 1e6,
        (cpu1.children - cpu0.children) / done * 1e6,
        busiest_child_share(cpu0, cpu1),
    )


@dataclass
class LatencyRun:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    samples: int


def latency_run(
    variant: str, sink: Sink, rate: float, seconds: float, tag: str, extra: Sequence[str] = ()
) -> LatencyRun:
    """Start a worker, then publish at a fixed ``rate``; each task records ``time.time() - published_at``."""
    client = broker()
    empty_broker()
    env = variant_env(variant, sink)
    worker = Worker(env, f"latency-{variant}-{tag}", loglevel=loglevel(variant), extra=extra)
    count = int(rate * seconds)
    try:
        ping(worker)
        publish(variant, env, count, rate=rate, stamp=True)
        wait_until(lambda: latency_count(client) >= count, timeout=120, what="the latency samples")
    finally:
        worker.stop()
    values = latency_values_ms(client)
    return LatencyRun(percentile(values, 50), percentile(values, 95), percentile(values, 99), len(values))


@dataclass
class CountdownRun:
    #: How long after its due time (publish time plus countdown) each task started, ms; negative: early.
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: Tasks that started before their due time, and the earliest of them (ms before it; 0 when none).
    early: int
    earliest_ms: float
    samples: int


def countdown_run(
    variant: str, sink: Sink, count: int, spread: float, tag: str, extra: Sequence[str] = ()
) -> CountdownRun:
    """Start a worker, then publish ``count`` tasks with countdowns from 1 to ``spread`` s; each records how late
    it started. On Redis the worker holds a countdown in memory; on RabbitMQ it waits in the broker (native
    delayed delivery, whole seconds)."""
    client = broker()
    empty_broker()
    env = variant_env(variant, sink)
    worker = Worker(env, f"countdown-{variant}-{tag}", loglevel=loglevel(variant), extra=extra)
    try:
        ping(worker)
        publish(variant, env, count, countdown_spread=spread)
        wait_until(lambda: latency_count(client) >= count, timeout=spread + 120, what="every countdown to run")
    finally:
        worker.stop()
    values = latency_values_ms(client)
    early = [v for v in values if v < 0]
    return CountdownRun(
        percentile(values, 50), percentile(values, 99), max(values), len(early), -min(early, default=0.0), len(values)
    )


def _reached(client: redis.Redis, target: int) -> bool:
    return done_count(client) >= target


@dataclass
class MemoryRun:
    tasks: list[int]
    child_rss_kib: list[list[int]]


def memory_run(sink: Sink, stages: list[int]) -> MemoryRun:
    """One instrumented worker whose children are never recycled; child RSS after each cumulative stage."""
    client = broker()
    empty_broker()
    env = instrumented_env(sink)
    worker = Worker(env, "memory-observable", loglevel="INFO", extra=["--max-tasks-per-child=100000000"])
    done_before = 0
    rss: list[list[int]] = []
    try:
        ping(worker)
        done_before = done_count(client)
        published = 0
        for stage in stages:
            publish("observable", env, stage - published)
            published = stage
            target = done_before + stage + len(rss) + 1  # every producer run adds one warm-up message
            wait_until(partial(_reached, client, target), timeout=900, what="memory stage")
            time.sleep(1.0)  # let the batch processors export what is queued
            rss.append([rss_kib(pid) for pid in worker.children()])
    finally:
        worker.stop()
    return MemoryRun(stages, rss)
