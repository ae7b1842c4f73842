"""The instruments of a process: the per-publish and per-run counters and histograms of every task, and the
counters of the project's events (dead letters, promos, notifications), created from one meter.

A process without telemetry gets instruments that discard everything (``_Discard``, the no-op meter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.trace import SpanContext

from observability.telemetry import metric_names as m
from observability.telemetry.in_process_metrics import InProcessCounter, InProcessHistogram

__all__ = ["Instruments", "TaskHistograms", "views"]

_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# A publish to a local Redis takes 0.2-1 ms; a broker that does not answer, the retry policy's seconds.
_PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
# Sent after the promo went live: a batch every 30 s plus the send, seconds when healthy; 60 is the delivery
# SLO's threshold (docs/slo.md), the longer ones a backlog or a provider's retries.
_DELIVERY_LAG_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1800, 3600)


@dataclass
class TaskHistograms:
    """The histograms of every task run and every publish, summed in-process and added to each metrics export."""

    duration: InProcessHistogram = field(
        default_factory=lambda: InProcessHistogram(
            m.TASK_DURATION, unit="s", description="Task run duration, every outcome", bounds=_SECONDS_BUCKETS
        )
    )
    queue_wait: InProcessHistogram = field(
        default_factory=lambda: InProcessHistogram(
            m.TASK_QUEUE_WAIT, unit="s", description="Publish (or ETA) to start", bounds=_WAIT_BUCKETS
        )
    )
    publish_duration: InProcessHistogram = field(
        default_factory=lambda: InProcessHistogram(
            m.TASK_PUBLISH_DURATION, unit="s", description="Task publish duration, by outcome", bounds=_PUBLISH_BUCKETS
        )
    )

    def all(self) -> list[InProcessHistogram]:
        return [self.duration, self.queue_wait, self.publish_duration]


class _TaskCounter(Protocol):
    def add(self, amount: int, attributes: Mapping[str, str]) -> None: ...


class _TaskHistogram(Protocol):
    def record(self, value: float, attributes: Mapping[str, str], span_context: SpanContext | None = None) -> None: ...


class _Discard:
    """The per-publish and per-run counters and histograms of a process without telemetry: its in-process sums
    would never be exported, and keeping them cost about 6 us per task run (bench.child_path, ``reliability``
    variant)."""

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        return None

    def record(self, value: float, attributes: Mapping[str, str], span_context: SpanContext | None = None) -> None:
        return None


@dataclass
class Instruments:
    published: _TaskCounter
    publish_failed: _TaskCounter
    publish_duration: _TaskHistogram
    started: _TaskCounter
    finished: _TaskCounter
    duration: _TaskHistogram
    queue_wait: _TaskHistogram
    results_unstored: Any
    beat_ticks: Any
    dead_letters_created: Any
    dead_letters_replayed: Any
    dead_letters_purged: Any
    activation_lag: Any
    promos_activated: Any
    promos_ended: Any
    notifications_sent: Any
    notifications_failed: Any
    notifications_delivery_lag: Any
    notifications_rate_limit_wait: Any
    notifications_throttled: Any

    @classmethod
    def create(cls, meter: Meter, histograms: TaskHistograms | None) -> Instruments:
        """The instruments of ``meter``; the per-publish and per-run ones discard everything when ``histograms`` is
        None."""
        counter, histogram = meter.create_counter, meter.create_histogram
        published: _TaskCounter
        publish_failed: _TaskCounter
        started: _TaskCounter
        finished: _TaskCounter
        duration: _TaskHistogram
        queue_wait: _TaskHistogram
        publish_duration: _TaskHistogram
        if histograms is None:
            published = publish_failed = started = finished = _Discard()
            duration = queue_wait = publish_duration = _Discard()
        else:
            # Every publish counts too: the SDK counter took ~30 us of a ~1 ms .delay() (py-spy, bench.publish).
            published = InProcessCounter(meter, m.TASKS_PUBLISHED, unit="{task}", description="Task messages published")
            publish_failed = InProcessCounter(
                meter, m.TASKS_PUBLISH_FAILED, unit="{task}", description="Task publishes that raised, by error type"
            )
            started = InProcessCounter(meter, m.TASKS_STARTED, unit="{task}", description="Task runs started")
            finished = InProcessCounter(
                meter, m.TASKS_FINISHED, unit="{task}", description="Task runs finished, by outcome"
            )
            duration, queue_wait = histograms.duration, histograms.queue_wait
            publish_duration = histograms.publish_duration
        return cls(
            published=published,
            publish_failed=publish_failed,
            publish_duration=publish_duration,
            started=started,
            finished=finished,
            duration=duration,
            queue_wait=queue_wait,
            results_unstored=counter(
                m.TASK_RESULTS_UNSTORED, unit="{state}", description="Task states the result backend did not take"
            ),
            beat_ticks=counter(m.BEAT_TICKS, unit="{send}", description="Beat entries sent, by outcome"),
            dead_letters_created=counter(m.DEAD_LETTERS_CREATED, unit="{entry}", description="Dead letters"),
            dead_letters_replayed=counter(m.DEAD_LETTERS_REPLAYED, unit="{entry}", description="Replays"),
            dead_letters_purged=counter(m.DEAD_LETTERS_PURGED, unit="{entry}", description="Purged entries"),
            activation_lag=histogram(m.PROMO_ACTIVATION_LAG, unit="s", description="activated_at - starts_at"),
            promos_activated=counter(m.PROMOS_ACTIVATED, unit="{promo}", description="Promos activated"),
            promos_ended=counter(m.PROMOS_ENDED, unit="{promo}", description="Promos ended"),
            notifications_sent=counter(m.NOTIFICATIONS_SENT, unit="{notification}", description="Delivered"),
            notifications_failed=counter(m.NOTIFICATIONS_FAILED, unit="{notification}", description="Gave up"),
            notifications_delivery_lag=histogram(
                m.NOTIFICATIONS_DELIVERY_LAG, unit="s", description="sent_at - the promo's activation (or subscription)"
            ),
            notifications_rate_limit_wait=counter(
                m.NOTIFICATIONS_RATE_LIMIT_WAIT, unit="s", description="Time delivery batches waited for the limiter"
            ),
            notifications_throttled=counter(
                m.NOTIFICATIONS_THROTTLED, unit="{answer}", description="Throttling answers from the provider"
            ),
        )


def views() -> list[View]:
    return [
        View(instrument_name=m.PROMO_ACTIVATION_LAG, aggregation=ExplicitBucketHistogramAggregation(_LAG_BUCKETS)),
        View(
            instrument_name=m.NOTIFICATIONS_DELIVERY_LAG,
            aggregation=ExplicitBucketHistogramAggregation(_DELIVERY_LAG_BUCKETS),
        ),
    ]
