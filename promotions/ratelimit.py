"""The global delivery rate limit of each channel and its throttle pause, shared through Redis by every worker
process on every host: a token bucket that paces sends, and a "paused until" that a provider's throttling
answer sets for the whole channel.

Why a Lua token bucket and not the ``limits`` library: ``limits``' Redis moving window stamps each hit with the
calling host's clock (``time.time()`` in the client), so hosts whose clocks differ by 50 ms break a 1 s window by
5%; it lets the whole limit go in one burst at the start of a window; and it tells no caller how long to wait
for ``n`` more. The bucket below runs atomically in Redis (one ``EVALSHA`` an acquisition) on the server's clock
(``TIME``), holds at most ``burst`` tokens, and so grants at most ``rate * T + burst`` in any T seconds; and it
counts the last second's grants, so that no 1 s window holds more than ``rate`` of them. The two do different
jobs: the burst is what lets a process the machine woke late catch up on the tokens it missed (too small, and a
loaded machine leaves the limit unused: 89% of 200/s with a burst of 4); the window keeps that catching up from
ever putting more than the rate in a second (a burst of 8 alone let 211 go in one at 200/s).

Why acquire at send time and not reserve ahead: a reservation granted ahead (the bucket in debt, the caller
sleeping it off) counts a send at its slot, but a process the loaded machine wakes late sends after its slot,
in the window of later slots (bench ``ratelimit``: 211 in a 1 s window at 200/s). ``try_acquire`` takes tokens
only when they are there now, else answers how long until they would be and takes nothing; the caller sleeps,
asks again, and sends right after a grant. A late wake-up then only delays its own send: what the provider sees
above ``rate`` in a 1 s window is bounded by the sends granted but not yet out - one acquisition per process.

Imports settings, the app's Redis client, telemetry and the channels' message type; ``promotions.notifications``
calls it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import structlog
from django.conf import settings
from redis.commands.core import Script

from observability import telemetry
from observability.redis_client import state_redis
from promotions.channels import OutgoingMessage

__all__ = ["Acquisition", "Pacer", "channel_throttled", "channel_try_acquire"]

log = structlog.get_logger(__name__)

_KEY_PREFIX = "notifications:ratelimit"

# KEYS: bucket, pause, grants of the last second (a sorted set by time). ARGV: rate/s (0: no limit), burst (the
# bucket's capacity), tokens wanted. Returns {granted (0 or the tokens wanted), wait seconds, now} (numbers as
# strings: Lua numbers become integers in replies). Granted only if the tokens are in the bucket now and the last
# 1 s of grants leaves room for them under the rate; refused, nothing is changed and the wait is how long until
# they would be there (or until a throttle pause ends). Redis 7 replicates a script's
# effects, so TIME before a write is allowed. Stamps to the microsecond and tokens to 17 digits: tostring keeps 14,
# 0.1 ms of a unix time, and the refills' rounding errors added up to a quarter token over 700 grants at 200/s.
_TRY_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local paused_until = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
local stamp = string.format('%.6f', now)
if paused_until > now then
  return {0, tostring(paused_until - now), stamp}
end
if rate <= 0 then
  return {wanted, '0', stamp}
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
if tokens < wanted then
  return {0, string.format('%.17g', (wanted - tokens) / rate), stamp}
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 1)
local recent = redis.call('ZCARD', KEYS[3])
local over = recent + wanted - math.max(wanted, math.floor(rate))
if over > 0 then
  local oldest = redis.call('ZRANGE', KEYS[3], over - 1, over - 1, 'WITHSCORES')
  return {0, string.format('%.17g', tonumber(oldest[2]) + 1 - now), stamp}
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', wanted)
for i = seq - wanted + 1, seq do
  redis.call('ZADD', KEYS[3], now, i)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens - wanted), 'at', stamp)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
redis.call('EXPIRE', KEYS[3], 60)
return {wanted, '0', stamp}
"""

# KEYS: pause. ARGV: first pause (s), longest pause (s). Pauses the channel unless it is paused already (every
# message in flight at a throttle gets the same answer: one pause, not one per message), doubling the pause when
# the previous one ended less than a longest pause ago. Returns the pause's end, in seconds from now.
_THROTTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local first, longest = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'until', 'pause')
local paused_until = tonumber(state[1]) or 0
if paused_until > now then
  return tostring(paused_until - now)
end
local pause = first
if state[2] and now - paused_until < longest then
  pause = math.min(longest, tonumber(state[2]) * 2)
end
redis.call('HSET', KEYS[1], 'until', tostring(now + pause), 'pause', tostring(pause))
redis.call('EXPIRE', KEYS[1], math.ceil(pause + longest) + 1)
return tostring(pause)
"""

_scripts: dict[str, Script] = {}


def _script(source: str) -> Script:
    # Registered once per process on the current client (re-created after a fork by state_redis).
    client = state_redis()
    script = _scripts.get(source)
    if script is None or script.registered_client is not client:
        script = _scripts[source] = client.register_script(source)
    return script


def _keys(channel: str) -> list[str]:
    return [f"{_KEY_PREFIX}:{channel}:bucket", f"{_KEY_PREFIX}:{channel}:pause", f"{_KEY_PREFIX}:{channel}:sent"]


@dataclass(frozen=True)
class Acquisition:
    """The answer to one ``channel_try_acquire``: ``granted`` tokens (0: refused, nothing taken), the seconds
    until the tokens (or the end of a throttle pause) would be there when refused (0 when granted), and
    ``at``, the Redis server's clock when it answered (unix seconds)."""

    granted: int
    wait_seconds: float
    at: float


def channel_try_acquire(
    channel: str, *, tokens: int, rate: float | None = None, burst: int | None = None
) -> Acquisition:
    """Take ``tokens`` sends from ``channel``'s bucket if they are there now (and the channel is not paused);
    otherwise take nothing and say how long until they would be. ``rate`` and ``burst`` default to the settings;
    a burst below ``tokens`` is raised to it (a bigger acquisition would never be granted)."""
    rate = settings.NOTIFICATION_RATE_LIMIT_PER_SECOND if rate is None else rate
    burst = max(tokens, settings.NOTIFICATION_RATE_LIMIT_BURST if burst is None else burst)
    granted, wait, now = _script(_TRY_ACQUIRE)(keys=_keys(channel), args=[rate, burst, tokens])
    return Acquisition(int(granted), float(wait), float(now))


def channel_throttled(channel: str) -> float:
    """Record a provider's throttling answer on ``channel``: every worker pauses it
    (``NOTIFICATION_THROTTLE_PAUSE_SECONDS``, doubling while the answers go on, up to
    ``NOTIFICATION_THROTTLE_PAUSE_MAX_SECONDS``). Returns the seconds until the pause ends."""
    pause = _script(_THROTTLE)(
        keys=_keys(channel)[1:2],
        args=[settings.NOTIFICATION_THROTTLE_PAUSE_SECONDS, settings.NOTIFICATION_THROTTLE_PAUSE_MAX_SECONDS],
    )
    return float(pause)


#: Messages per pause check when the channel has no rate limit: a throttle pause still holds every worker (at
#: most this many messages each go out after it), at one Redis call per 10 messages rather than per message.
UNLIMITED_CHUNK = 10

#: Below this rate, one acquisition per message; above, one per ``rate / PER_MESSAGE_BELOW`` messages (at most
#: the burst). Messages granted together go out one after the other, so a process stalled mid-chunk sends the
#: rest late, on top of later grants: the smaller the chunk, the less a stall can bunch. One ``EVALSHA`` per
#: message is cheap at these rates (a few hundred calls a second against a Redis that serves tens of thousands).
PER_MESSAGE_BELOW = 500.0


def chunk_size(rate: float, burst: int) -> int:
    """Messages per acquisition at ``rate`` (0: no limit) with a bucket of ``burst``."""
    if rate <= 0:
        return UNLIMITED_CHUNK
    return max(1, min(burst, int(rate // PER_MESSAGE_BELOW)))


class Pacer:
    """Paces one delivery batch through its channel's bucket. ``pace(messages)`` yields each message right after
    its send was acquired (in acquisitions of ``chunk_size`` messages), and stops early - the rest left unsent,
    for the caller to hand back - when the next acquisition or a throttle pause cannot be had within what is
    left of ``max_wait_seconds``, the batch's total waiting budget. A message the provider throttled
    (``throttled()``) pauses the channel for every worker and goes out again after the pause, at the end of the
    batch."""

    def __init__(self, channel: str, *, max_wait_seconds: float | None = None) -> None:
        self.channel = channel
        self.waited_seconds = 0.0
        #: Why the batch stopped before its last message (None: it did not).
        self.stopped: str | None = None
        budget = settings.NOTIFICATION_RATE_LIMIT_MAX_WAIT_SECONDS
        self._budget = budget if max_wait_seconds is None else max_wait_seconds
        self._chunk = chunk_size(settings.NOTIFICATION_RATE_LIMIT_PER_SECOND, settings.NOTIFICATION_RATE_LIMIT_BURST)
        self._pending: deque[OutgoingMessage] = deque()
        self._by_id: dict[int, OutgoingMessage] = {}

    def pace(self, messages: Sequence[OutgoingMessage]) -> Iterator[OutgoingMessage]:
        self._pending = deque(messages)
        self._by_id = {message.notification_id: message for message in messages}
        while self._pending and (chunk := self._acquire()) is not None:
            # Yielded as soon as acquired: the backend sends each message when it takes it from this generator.
            yield from chunk

    def _acquire(self) -> list[OutgoingMessage] | None:
        """Acquire the next chunk, now: sleep until the bucket (or a throttle pause) says its tokens would be
        there and ask again - another process may have taken them meanwhile. None (the chunk put back,
        ``stopped`` set) when the wait would outlast the budget."""
        chunk = [self._pending.popleft() for _ in range(min(self._chunk, len(self._pending)))]
        while True:
            acquisition = channel_try_acquire(self.channel, tokens=len(chunk))
            if acquisition.granted:
                return chunk
            left = self._budget - self.waited_seconds
            if acquisition.wait_seconds > left:
                self._pending.extendleft(reversed(chunk))
                self.stopped = f"rate limit: {acquisition.wait_seconds:.2f} s to wait, {left:.2f} s of budget left"
                return None
            self._wait(acquisition.wait_seconds)

    def throttled(self, notification_id: int) -> None:
        """The provider answered ``notification_id`` with a throttle: pause the channel everywhere, and send the
        message again after the pause."""
        pause = channel_throttled(self.channel)
        self._pending.append(self._by_id[notification_id])
        telemetry.notifications_throttled(channel=self.channel)
        log.warning("notifications.channel_throttled", channel=self.channel, paused_seconds=round(pause, 3))

    def _wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        started = time.monotonic()
        time.sleep(seconds)  # bounded by the batch's budget: never reaches the lease or a time limit
        waited = time.monotonic() - started
        self.waited_seconds += waited
        telemetry.notifications_rate_limit_waited(channel=self.channel, seconds=waited)
