"""The channel rate limiter against real Redis: the token bucket's ceiling, its waits, its refusals, and the
throttle pause every worker honours.

Ceilings are asserted on the bucket's own schedule (each reservation's Redis-clock time plus its wait), which
does not depend on how fast this machine runs the threads."""

from __future__ import annotations

import threading
import uuid

import pytest

from promotions.channels import OutgoingMessage
from promotions.ratelimit import Pacer, Reservation, channel_reserve, channel_throttled
from tests.conftest import wait_for
from tests.smtp import max_per_window


@pytest.fixture
def channel() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_threads_sharing_a_bucket_never_exceed_rate_times_window_plus_burst(channel):
    """Four threads reserving one send at a time from one bucket (200/s, burst 5), 700 sends in all: no 1 s window
    of the schedule holds more than 205, and no reservation waits longer than the other threads' reservations
    ahead of it take."""
    rate, burst, threads, per_thread = 200.0, 5, 4, 175
    answers: list[Reservation] = []
    lock = threading.Lock()

    def reserve_all() -> None:
        for _ in range(per_thread):
            reservation = channel_reserve(channel, tokens=1, max_wait_seconds=5, rate=rate, burst=burst)
            with lock:
                answers.append(reservation)
            threading.Event().wait(reservation.wait_seconds)  # the sender's wait, as the pacer sleeps it

    workers = [threading.Thread(target=reserve_all) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert len(answers) == threads * per_thread and all(a.granted == 1 for a in answers)
    slots = [a.reserved_at + a.wait_seconds for a in answers]
    assert max_per_window(slots) <= rate + burst
    assert all(0 <= a.wait_seconds <= threads / rate + 1e-6 for a in answers)


def test_the_burst_goes_at_once_then_sends_are_spaced_by_the_rate(channel):
    """A fresh bucket lets ``burst`` sends go without waiting; the next waits about one rate interval."""
    first = [channel_reserve(channel, tokens=1, max_wait_seconds=5, rate=10, burst=3) for _ in range(3)]
    fourth = channel_reserve(channel, tokens=1, max_wait_seconds=5, rate=10, burst=3)

    assert [r.wait_seconds for r in first] == [0, 0, 0]
    assert 0.05 < fourth.wait_seconds <= 0.1


def test_a_reservation_that_would_wait_too_long_is_refused_and_takes_nothing(channel):
    """Refused (the wait exceeds what the caller can spend), a reservation leaves the bucket as it was: the next
    caller gets the same place in the schedule."""
    channel_reserve(channel, tokens=1, max_wait_seconds=5, rate=10, burst=1)

    refused = channel_reserve(channel, tokens=1, max_wait_seconds=0.01, rate=10, burst=1)
    granted = channel_reserve(channel, tokens=1, max_wait_seconds=5, rate=10, burst=1)

    assert refused.granted == 0 and 0.05 < refused.wait_seconds <= 0.1
    assert granted.granted == 1 and granted.wait_seconds <= refused.wait_seconds


def test_a_throttle_pauses_the_channel_for_every_caller_and_doubles_while_it_goes_on(channel, settings):
    """A throttling answer pauses the channel, limited or not; more answers during the pause do not extend it;
    a throttle soon after the pause ended pauses twice as long."""
    settings.NOTIFICATION_THROTTLE_PAUSE_SECONDS = 0.3
    settings.NOTIFICATION_THROTTLE_PAUSE_MAX_SECONDS = 5.0

    assert channel_throttled(channel) == pytest.approx(0.3)
    during = channel_reserve(channel, tokens=1, max_wait_seconds=10, rate=0)
    again = channel_throttled(channel)

    assert during.granted == 0 and 0 < during.wait_seconds <= 0.3
    assert again <= 0.3  # the same pause, not a new one
    wait_for(lambda: channel_reserve(channel, tokens=1, max_wait_seconds=0, rate=0).granted, what="the pause to end")
    assert channel_throttled(channel) == pytest.approx(0.6)


def _messages(count: int) -> list[OutgoingMessage]:
    return [OutgoingMessage(n, str(uuid.uuid4()), f"u{n}@example.com", "s", "b") for n in range(count)]


def test_a_pacer_stops_when_the_next_send_would_outlast_its_budget(channel, settings):
    """At 10/s with 0.25 s of waiting allowed, a batch of 10 sends a few and stops, saying why: the rest are
    the caller's to hand back."""
    settings.NOTIFICATION_RATE_LIMIT_PER_SECOND = 10.0
    settings.NOTIFICATION_RATE_LIMIT_BURST = 1
    pacer = Pacer(channel, max_wait_seconds=0.25)

    sent = list(pacer.pace(_messages(10)))

    assert 1 <= len(sent) <= 4
    assert pacer.stopped is not None and pacer.stopped.startswith("rate limit")
    assert pacer.waited_seconds <= 0.25


def test_a_throttled_message_is_sent_again_after_the_pause(channel, settings):
    """The pacer puts a throttled message at the end of its batch, and sends it once the channel's pause ends."""
    settings.NOTIFICATION_THROTTLE_PAUSE_SECONDS = 0.2
    pacer = Pacer(channel, max_wait_seconds=5)
    sent = []

    for message in pacer.pace(_messages(3)):
        sent.append(message.notification_id)
        if len(sent) == 1:
            pacer.throttled(message.notification_id)

    assert sent == [0, 1, 2, 0]
    assert pacer.stopped is None and pacer.waited_seconds > 0
