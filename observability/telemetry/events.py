"""Counters and histograms of the project's own events: beat's sends, by entry and outcome; dead letters
created, replayed and purged; promos activated (with their activation lag) and ended; notifications delivered
(with their delivery lag) and given up, the time spent waiting for the rate limiter and the provider's
throttling answers, by channel."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from observability.telemetry.providers import current

__all__ = [
    "beat_ticked",
    "dead_letter_created",
    "dead_letters_purged",
    "dead_letters_replayed",
    "notifications_delivered",
    "notifications_rate_limit_waited",
    "notifications_throttled",
    "promos_synced",
]


def beat_ticked(entry: str, outcome: str) -> None:
    current().instruments.beat_ticks.add(1, {"entry": entry, "outcome": outcome})


def dead_letter_created(task_name: str, reason: str) -> None:
    current().instruments.dead_letters_created.add(1, {"task": task_name or "(none)", "reason": reason})


def dead_letters_replayed(task_names: Iterable[str]) -> None:
    counter = current().instruments.dead_letters_replayed
    for name in task_names:
        counter.add(1, {"task": name})


def dead_letters_purged(counts: Mapping[str, int]) -> None:
    counter = current().instruments.dead_letters_purged
    for status, count in counts.items():
        counter.add(count, {"status": status})


# --- Domain -------------------------------------------------------------------------------------------------------
def promos_synced(activation_lags_seconds: Iterable[float], ended: int) -> None:
    instruments = current().instruments
    lags = list(activation_lags_seconds)
    for lag in lags:
        instruments.activation_lag.record(lag)
    if lags:
        instruments.promos_activated.add(len(lags))
    if ended:
        instruments.promos_ended.add(ended)


def notifications_delivered(*, channel: str, sent_lags_seconds: Sequence[float], failed: int) -> None:
    """``sent_lags_seconds``: for each notification sent, seconds from its promo going live (or from its
    subscription, if later) to its sending."""
    instruments = current().instruments
    attributes = {"channel": channel}
    for lag in sent_lags_seconds:
        instruments.notifications_delivery_lag.record(lag, attributes)
    if sent_lags_seconds:
        instruments.notifications_sent.add(len(sent_lags_seconds), attributes)
    if failed:
        instruments.notifications_failed.add(failed, attributes)


def notifications_rate_limit_waited(*, channel: str, seconds: float) -> None:
    current().instruments.notifications_rate_limit_wait.add(seconds, {"channel": channel})


def notifications_throttled(*, channel: str) -> None:
    current().instruments.notifications_throttled.add(1, {"channel": channel})
