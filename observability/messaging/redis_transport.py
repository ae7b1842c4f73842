"""The Redis transport with a guarded read path (``CELERY_BROKER_TRANSPORT`` points here).

kombu 5.7 decodes each message it pops inside the worker's event loop and only then hands it to QoS (the
unacknowledged index in Redis): bytes that are not JSON, a body its codecs cannot decode or a delivery tag
Redis refuses crash the worker (the message, already popped, is gone), and a JSON envelope without a
delivery tag breaks the connection, which makes every unacknowledged message run again. Here an envelope
that kombu cannot turn into a message QoS holds is dead-lettered as ``undecodable_message`` (raw bytes
kept) and the worker goes on.

Redis may also refuse the write to its unacknowledged index for a reason that is not the message's: out of
memory under ``noeviction``, MISCONF after a failed save, a replica gone read-only - any ``ResponseError``.
The message, healthy, is put back where it was popped from (nothing lost, nothing drained); when Redis refuses
that too (it refuses every write then), it is dead-lettered as ``broker_refused``, whole and replayable. Then
the error is raised, as kombu raises it: a channel error, on which the worker's consumer reconnects
(``CELERY_BROKER_CHANNEL_ERROR_RETRY``) instead of popping the next message - and, while Redis refuses the
writes of its start (queue bindings), it consumes nothing, so an incident costs at most a message per
connection, not the queue.

For a consumer that does not acknowledge (``no_ack``: the pidbox replies of ``celery inspect``, event receivers
such as Flower) QoS holds nothing: an error of its callback is raised as kombu raises it, never taken for the
message's.

It also reports the consumer's recovery from a silently dropped connection in one line. kombu 5.7 drops a
BRPOP connection whose reply is overdue by ``health_check_interval`` (a frozen flow: no reset, no close) and
opens a new one on the next loop tick, logging only the drop; ``broker.reconnected`` says both, once the new
connection is up, and replaces kombu's line.
"""

from __future__ import annotations

import base64
import logging
from contextvars import ContextVar
from queue import Empty
from time import monotonic
from typing import Any

import structlog
from kombu import connection as kombu_connection
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ResponseError

__all__ = ["STALE_BRPOP_LINE", "Transport", "envelope_error"]

log = structlog.get_logger(__name__)

#: kombu 5.7's warning when ``MultiChannelPoller.maybe_check_brpop_health`` drops a stale BRPOP connection
#: (pinned by tests/observability/messaging/test_connection_health.py).
STALE_BRPOP_LINE = "Redis BRPOP got no reply for %.0f seconds; dropping stale connection"
_checking_brpop: ContextVar[bool] = ContextVar("checking_brpop", default=False)


class _StaleBrpopLineFilter(logging.Filter):
    """Drops kombu's drop line, which ``broker.reconnected`` replaces, while this transport's check runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_checking_brpop.get() and record.msg == STALE_BRPOP_LINE)


_kombu_log = logging.getLogger(kombu_redis.logger.name)
if not any(isinstance(f, _StaleBrpopLineFilter) for f in _kombu_log.filters):
    _kombu_log.addFilter(_StaleBrpopLineFilter())


def envelope_error(payload: Any, channel: kombu_redis.Channel) -> str | None:
    """Why ``payload`` cannot become a kombu message, or None when it can.

    It checks all that kombu reads of the envelope before QoS holds the message: the delivery tag, the
    delivery info, the headers, and the body under its ``body_encoding``. A tag Redis refuses although it
    passes here (a string it cannot encode) is caught when the message is handed on.
    """
    if not isinstance(payload, dict):
        return "the message is not a JSON object"
    properties = payload.get("properties")
    if not isinstance(properties, dict) or not _is_delivery_tag(properties.get("delivery_tag")):
        return "the message has no properties.delivery_tag that is a string or an integer"
    delivery_info = properties.get("delivery_info")
    if not isinstance(delivery_info, dict) or not {"exchange", "routing_key"} <= delivery_info.keys():
        return "the message has no properties.delivery_info with exchange and routing_key"
    if not isinstance(payload.get("headers") or {}, dict):
        return "the message headers are not an object"
    body = payload.get("body")
    if body:
        try:
            channel.decode_body(body, properties.get("body_encoding"))
        except Exception as exc:  # noqa: BLE001 - kombu's codecs fail on bad input with any error, AttributeError too
            return f"the message body cannot be decoded: {exc}"
    return None


def _is_delivery_tag(value: Any) -> bool:
    # The tag keys QoS's unacknowledged index in Redis: redis-py stores strings and integers, and refuses
    # bool although Python counts it an int.
    return isinstance(value, str | int) and not isinstance(value, bool)


class Channel(kombu_redis.Channel):
    #: Why the last BRPOP connection was dropped, and when its BRPOP had been sent; None once reported.
    stale_brpop: tuple[str, float] | None = None

    def _brpop_start(self, timeout: float | None = None) -> None:
        # kombu's poller has just registered (and so connected) the BRPOP connection again: report the
        # recovery before the first BRPOP over it.
        if self.stale_brpop is not None and self.client.connection._sock is not None:
            reason, sent_at = self.stale_brpop
            self.stale_brpop = None
            log.warning(
                "broker.reconnected",
                connection="consumer (BRPOP)",
                reason=reason,
                action="dropped the connection and opened a new one",
                silent_for_seconds=round(monotonic() - sent_at, 1),
            )
        super()._brpop_start(timeout)  # type: ignore[misc]  # not in the stubs

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str | None, **kwargs: Any) -> Any:
        if no_ack:
            callback = self._marking_errors(callback)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def _marking_errors(self, callback: Any) -> Any:
        # With no_ack, QoS never holds the message, so _hand_on cannot tell the callback's error from Redis
        # refusing the message by the delivery tag: the wrapper marks the callback's own.
        def marked(message: Any) -> Any:
            try:
                return callback(message)
            except BaseException as exc:
                exc.__dict__["_raised_by_consumer"] = True
                raise

        return marked

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's _brpop_read, but for the marked lines.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:  # type: ignore[attr-defined]
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                key = dest  # marked: the list the message was popped from, to put it back
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)  # type: ignore[attr-defined]
                self._deliver_or_dead_letter(item, dest, key)  # marked: was _deliver(loads(item), dest)
                return True
            raise Empty()
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # type: ignore[attr-defined]

    def _deliver_or_dead_letter(self, item: bytes, queue: str, key: bytes) -> None:
        error: str | ResponseError | None
        try:
            payload = loads(bytes_to_str(item))
            error = envelope_error(payload, self)
        except Exception as exc:  # noqa: BLE001 - the JSON decoder and kombu's type hooks fail with any error
            error = f"the message is not JSON: {exc}"
        if error is None:
            error = self._hand_on(payload, queue)
        if isinstance(error, ResponseError):
            self._put_back_or_dead_letter(item, payload, queue, key, error)
            raise error  # a channel error: the consumer reconnects rather than pop the next message
        if error is not None:
            self._dead_letter(item, queue, error)

    def _hand_on(self, payload: dict[str, Any], queue: str) -> str | ResponseError | None:
        """Deliver ``payload`` as kombu does: None once QoS holds it, or why it could not get there.

        An error before QoS holds the message (Redis refusing its delivery tag as a key of the unacknowledged
        index) is returned, to dead-letter the message - and Redis refusing the write itself (a
        ``ResponseError``: out of memory, MISCONF...) is returned as it is, the message being healthy. Errors
        once QoS holds it, or raised by a ``no_ack`` consumer's callback, are the consumer's: raised, as kombu
        raises them (a held message is restored from that index, not lost). Connection errors are raised whenever
        they come, for kombu to reconnect.
        """
        tag = payload["properties"]["delivery_tag"]
        try:
            self.connection._deliver(payload, queue)
        except self.connection_errors:  # type: ignore[attr-defined]
            raise
        except Exception as exc:  # until QoS holds the message, any error would lose it
            if tag in self.qos._delivered or exc.__dict__.get("_raised_by_consumer"):  # type: ignore[operator]
                raise
            if isinstance(exc, ResponseError):
                return exc
            return f"the message cannot be handed to its consumer: {exc}"
        return None

    def _put_back_or_dead_letter(
        self, item: bytes, payload: dict[str, Any], queue: str, key: bytes, refused: ResponseError
    ) -> None:
        """Return a message Redis refused to hold to the end of its list BRPOP takes from (its turn kept); when
        Redis refuses that write too, record it as ``broker_refused``, or log it whole if Postgres is down."""
        from observability import telemetry
        from observability.deadletters import services as dead_letters
        from observability.deadletters.models import DeadLetterReason
        from observability.messaging.consumer import failure_from_message

        error = f"Redis refused to hold the message unacknowledged: {refused}"
        try:
            with self.conn_or_acquire() as client:
                client.rpush(key, item)
        except (*self.connection_errors, ResponseError) as exc:  # type: ignore[attr-defined]
            error = f"{error}; putting it back in its queue failed too: {exc}"
        else:
            log.error("broker.refused", queue=queue, error=str(refused), action="put the message back in its queue")
            return
        message = self.Message(payload, channel=self)
        failure = failure_from_message(
            message, DeadLetterReason.BROKER_REFUSED, error, f"{type(refused).__module__}.{type(refused).__qualname__}"
        )
        if dead_letters.record_or_report(failure):
            telemetry.task_outcome_in_main(failure.task_name, queue, "rejected", type(refused).__name__, None)
            log.error("broker.refused", queue=queue, error=str(refused), action="recorded as a dead letter")
            return
        log.critical("dead_letter.lost", queue=queue, raw_base64=base64.b64encode(item).decode())

    def _dead_letter(self, item: bytes, queue: str, error: str) -> None:
        # The transport loads before Django's app registry is ready.
        from observability import telemetry
        from observability.deadletters import services as dead_letters
        from observability.failure import Failure

        failure = Failure(
            reason="undecodable_message",
            queue=queue,
            routing_key=queue,
            raw_message=item.decode("utf-8", "replace")[:100_000],
            exception_type="kombu.exceptions.DecodeError",
            exception_message=error,
        )
        if dead_letters.record_or_report(failure):
            telemetry.task_outcome_in_main("", queue, "rejected", "DecodeError", None)
            return
        # Postgres and the broker are both out of reach; the bytes were popped and cannot go back through
        # this connection: they survive in the log alone.
        log.critical("dead_letter.lost", queue=queue, raw_base64=base64.b64encode(item).decode())


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, remembering on each channel why its BRPOP connection was dropped."""

    def maybe_check_brpop_health(self) -> None:
        waiting = [
            (channel, channel._in_poll, channel._brpop_sent_at)
            for channel in self._channels  # type: ignore[attr-defined]  # kombu 5.7, not in the stubs
            if channel._in_poll and channel._brpop_sent_at is not None
        ]
        token = _checking_brpop.set(True)
        try:
            super().maybe_check_brpop_health()  # type: ignore[misc]  # kombu 5.7, not in the stubs
        finally:
            _checking_brpop.reset(token)
        now = monotonic()
        for channel, connection, sent_at in waiting:
            if connection._sock is None:  # kombu dropped it: no reply within brpop_timeout + the interval
                channel.stale_brpop = (f"no reply to BRPOP in {now - sent_at:.0f} s", sent_at)


class Transport(kombu_redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()  # before any channel registers with it


# A connection's URL (``Connection.as_uri``) begins with its transport setting, which for this transport is its
# import path: ``observability.messaging.redis_transport:Transport://...``. Flower picks its Broker tab's
# client by that URL's scheme (flower.utils.broker.Broker) and found none ("'redis' broker is not supported").
# kombu's ``resolve_aliases`` names a transport in URLs (``pyamqp`` shows as ``amqp``): this one shows as
# ``redis``, what it speaks. Connections are still built from the setting (``clone`` and pools read it
# unresolved), so the guarded read path above stays in use.
kombu_connection.resolve_aliases[f"{__name__}:Transport"] = "redis"  # type: ignore[attr-defined]  # not in the stubs
