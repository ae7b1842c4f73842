"""Beat entries' health, as the workers see it: the base task notes each successful run of a schedule entry
in the Redis of the app's state (``REDIS_URL``; ``record_beat_success``), and the worker's main process exports
it with each entry's interval, so an alert can say "missed N intervals" without a per-entry constant."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

import structlog
from celery import current_app
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from redis.exceptions import RedisError

from observability.redis_client import state_redis
from observability.telemetry import metric_names as m

__all__ = ["BEAT_LAST_SUCCESS_KEY", "record_beat_success", "register_gauges"]

#: Redis hash: beat entry -> unix time of its last successful run (written by the run's worker child).
BEAT_LAST_SUCCESS_KEY = "observability:beat:last_success"


def record_beat_success(entry: str) -> None:
    """Note that the beat entry ``entry`` just ran successfully (one HSET per periodic run); best effort."""
    try:
        state_redis().hset(BEAT_LAST_SUCCESS_KEY, entry, str(time.time()))
    except RedisError as exc:
        structlog.get_logger(__name__).warning("beat_success.unrecorded", entry=entry, error=str(exc))


def _beat_intervals(options: CallbackOptions) -> Iterable[Observation]:
    # Exported beside the last success so that a "missed N intervals" alert needs no per-entry constant.
    observations = []
    for entry, spec in current_app.conf.beat_schedule.items():
        interval = getattr(spec["schedule"], "run_every", spec["schedule"])
        seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
        if isinstance(seconds, int | float):
            observations.append(Observation(float(seconds), {"entry": entry}))
    return observations


def _beat_last_success(options: CallbackOptions) -> Iterable[Observation]:
    try:
        values = state_redis().hgetall(BEAT_LAST_SUCCESS_KEY)
    except RedisError:
        return []
    return [Observation(float(ts), {"entry": entry.decode()}) for entry, ts in values.items()]  # type: ignore[union-attr]


def register_gauges(meter: Meter) -> None:
    """Register the beat gauges on ``meter`` (the worker main process's)."""
    meter.create_observable_gauge(
        m.BEAT_LAST_SUCCESS, [_beat_last_success], unit="s", description="Unix time of the last successful run"
    )
    meter.create_observable_gauge(
        m.BEAT_INTERVAL, [_beat_intervals], unit="s", description="Interval of each interval beat entry"
    )
