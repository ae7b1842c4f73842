"""The channel rate limiter against real Redis: the token bucket's ceiling, its refusals and their waits, and
the throttle pause every worker honours.

Ceilings are asserted on the bucket's own clock (each grant's Redis ``TIME``), which does not depend on how fast
this machine runs the threads: the contract is what the bucket grants, whenever its callers ask."""

from __future__ import annotations

import threading
import uuid

import pytest

from observability.redis_client import broker_redis
from promotions.channels import OutgoingMessage
from promotions.ratelimit import Acquisition, Pacer, channel_throttled, channel_try_acquire, chunk_size
from tests.conftest import wait_for
from tests.smtp import max_per_window


@pytest.fixture
def channel() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_threads_sharing_a_bucket_are_never_granted_more_than_burst_plus_rate_times_t(channel):
    """Four threads acquiring one send at a time from one bucket (200/s, burst 5), sleeping each refusal's wait,
    700 grants in all: over every interval between two grants, of any length t, at most ``burst + rate * t``
    were granted, and no 1 s window holds more than 200; every refusal waits more than 0 and at most one token's
    time (or until the oldest grant of the last second is a second old)."""
    rate, burst, threads, per_thread = 200.0, 5, 4, 175
    granted: list[float] = []
    refused: list[Acquisition] = []
    lock = threading.Lock()

    def acquire_all() -> None:
        for _ in range(per_thread):
            while not (acquisition := channel_try_acquire(channel, tokens=1, rate=rate, burst=burst)).granted:
                with lock:
                    refused.append(acquisition)
                threading.Event().wait(acquisition.wait_seconds)  # the pacer's sleep
            with lock:
                granted.append(acquisition.at)

    workers = [threading.Thread(target=acquire_all) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert len(granted) == threads * per_thread
    at = sorted(granted)
    # Grants i..j (inclusive) all fall in [at[i], at[j]]: j - i + 1 of them in at[j] - at[i] seconds.
    worst = max(j - i + 1 - rate * (at[j] - at[i]) for i in range(len(at)) for j in range(i, len(at)))
    assert worst <= burst + 1e-6
    assert max_per_window(at) <= rate
    assert refused and all(0 < r.wait_seconds <= 1 + 1e-9 for r in refused)


def test_the_burst_is_granted_at_once_then_a_refusal_says_when_the_next_token_is_there(channel):
    """A fresh bucket grants ``burst`` sends without waiting; the next is refused with about one token's wait."""
    first = [channel_try_acquire(channel, tokens=1, rate=10, burst=3) for _ in range(3)]
    fourth = channel_try_acquire(channel, tokens=1, rate=10, burst=3)

    assert [(a.granted, a.wait_seconds) for a in first] == [(1, 0), (1, 0), (1, 0)]
    assert fourth.granted == 0 and 0 < fourth.wait_seconds <= 0.1


def test_a_refused_acquisition_takes_nothing(channel):
    """Refused, an acquisition leaves the limiter as it was (its Redis state unchanged), and its wait is the time
    until the tokens it asked for would be there: the next caller asking for fewer gets them sooner."""
    keys = [f"notifications:ratelimit:{channel}:{name}" for name in ("bucket", "sent")]
    assert all(channel_try_acquire(channel, tokens=1, rate=4, burst=4).granted for _ in range(4))

    def state() -> tuple[object, ...]:
        return broker_redis().hgetall(keys[0]), broker_redis().zrange(keys[1], 0, -1, withscores=True)

    before = state()
    refused = channel_try_acquire(channel, tokens=4, rate=4, burst=4)

    assert state() == before
    assert refused.granted == 0 and 0.5 < refused.wait_seconds <= 1.0
    one = channel_try_acquire(channel, tokens=1, rate=4, burst=4)
    # The three tokens more that the refusal waited for take 0.75 s: the one token is there that much sooner
    # (unless a stall of the machine let the 0.25 s of that token pass between the two calls).
    if one.at - refused.at < 0.2:
        expected = refused.wait_seconds - (one.at - refused.at) - 0.75
        assert one.granted == 0 and one.wait_seconds == pytest.approx(expected, abs=1e-3)


def test_no_second_gets_more_than_the_rate_whatever_the_burst(channel):
    """A bucket bigger than a second of its rate (5/s, burst 20) still grants at most 5 in any 1 s window: the
    sixth is refused until the first grant is a second old, and then granted."""
    first = [channel_try_acquire(channel, tokens=1, rate=5, burst=20) for _ in range(5)]
    sixth = channel_try_acquire(channel, tokens=1, rate=5, burst=20)

    assert all(a.granted for a in first)
    assert sixth.granted == 0 and sixth.wait_seconds == pytest.approx(first[0].at + 1 - sixth.at, abs=1e-5)
    later = wait_for(
        lambda: (a := channel_try_acquire(channel, tokens=1, rate=5, burst=20)).granted and a, what="the 6th grant"
    )
    assert later.at >= first[0].at + 1


def test_a_burst_below_the_tokens_wanted_is_raised_to_them(channel):
    """An acquisition bigger than the burst would never be granted: the bucket's capacity is raised to it."""
    assert channel_try_acquire(channel, tokens=4, rate=10, burst=1).granted == 4
    assert channel_try_acquire(channel, tokens=12, rate=10, burst=1).granted == 0  # 4 taken in the last second


def test_chunks_are_one_message_at_low_rates_and_never_above_the_burst():
    assert chunk_size(40, 1) == chunk_size(200, 4) == chunk_size(499, 9) == 1
    assert chunk_size(2000, 40) == 4 and chunk_size(2000, 2) == 2
    assert chunk_size(0, 1) == 10  # unlimited: a pause check every 10 messages


def test_a_throttle_pauses_the_channel_for_every_caller_and_doubles_while_it_goes_on(channel, settings):
    """A throttling answer pauses the channel, limited or not; more answers during the pause do not extend it;
    a throttle soon after the pause ended pauses twice as long."""
    settings.NOTIFICATION_THROTTLE_PAUSE_SECONDS = 0.3
    settings.NOTIFICATION_THROTTLE_PAUSE_MAX_SECONDS = 5.0

    assert channel_throttled(channel) == pytest.approx(0.3)
    during = channel_try_acquire(channel, tokens=1, rate=0)
    again = channel_throttled(channel)

    assert during.granted == 0 and 0 < during.wait_seconds <= 0.3
    assert again <= 0.3  # the same pause, not a new one
    wait_for(lambda: channel_try_acquire(channel, tokens=1, rate=0).granted, what="the pause to end")
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
    # The budget bounds the waits asked for; each sleep may overshoot by a scheduler's lag on a loaded machine.
    # Without the budget, the ten sends would wait 0.9 s.
    assert pacer.waited_seconds <= 0.25 + 0.2


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
