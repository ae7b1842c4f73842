"""The fan-out: one ``pending`` notification per subscriber of a promo that went live, written in keyset batches.

A promo's subscriptions are walked by id, at most ``NOTIFICATION_FAN_OUT_BATCH_SIZE`` of them per statement, each
batch in a transaction of its own that also moves the promo's durable cursor (``fan_out_cursor``). Delivery is
``promotions.notifications``'; this module imports models only, and the tasks call it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from django.conf import settings
from django.db import connection, transaction

from promotions.models import Channel, FlashPromo, Notification, Subscription

__all__ = ["FanOutBatch", "FanOutRun", "promo_fan_out_batch", "promos_fan_out"]

log = structlog.get_logger(__name__)

_NOTIFICATION = Notification._meta.db_table
_PROMO = FlashPromo._meta.db_table
_SUBSCRIPTION = Subscription._meta.db_table

#: First key of the transaction-level advisory lock that serialises the batches of one promo (the second is
#: the promo id). An advisory lock rather than the promo's row lock: an edit holding the row (``promo_update``)
#: must not make a fan-out think another one has the promo. Any constant unused by other advisory locks.
FAN_OUT_LOCK_SPACE = 0x0FA0
_INT4 = 2**31


@dataclass(frozen=True)
class FanOutBatch:
    """What one batch did: ``queued`` rows written, for the subscriptions with ids in ``(after, through]``;
    ``more`` when the walk has subscribers left."""

    promo_id: int
    queued: int
    more: bool
    after: int = 0
    through: int = 0
    #: Why nothing was done: ``busy`` (another fan-out is writing this promo's batch) or ``stopped`` (the promo
    #: is not active any more, or its walk is finished). Empty when the batch ran.
    skipped: str = ""


@dataclass
class FanOutRun:
    queued: int = 0
    batches: int = 0
    #: Promos still to walk when the time budget ran out, for the caller to continue.
    unfinished: list[int] = field(default_factory=list)


@transaction.atomic
def promo_fan_out_batch(*, promo_id: int, now: datetime, batch_size: int | None = None) -> FanOutBatch:
    """Queue the next ``batch_size`` subscribers of ``promo_id`` after its cursor and move the cursor past them,
    in one transaction; at the end of the walk mark the promo ``notifications_queued``.

    A crash loses at most the batch in flight (rolled back); the next run starts from the committed cursor, so
    no row is written twice, and the unique key is the second line of defence. Two fan-outs of one promo take
    its batches in turn: one that finds the promo's batch lock held returns ``busy`` at once instead of
    waiting. The promo's row is locked only from the cursor update to the commit, never across batches."""
    size = batch_size or settings.NOTIFICATION_FAN_OUT_BATCH_SIZE
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%(space)s, (%(id)s %% %(int4)s)::int)",
            {"space": FAN_OUT_LOCK_SPACE, "id": promo_id, "int4": _INT4},
        )
        if not cursor.fetchone()[0]:
            return FanOutBatch(promo_id, 0, more=False, skipped="busy")
        # Read after taking the lock: the previous holder committed its cursor before releasing it.
        cursor.execute(
            f"""
            SELECT product_id, fan_out_cursor FROM {_PROMO}
             WHERE id = %(id)s AND status = 'active' AND ends_at > %(now)s AND NOT notifications_queued
            """,  # noqa: S608 - table names come from model metadata, values are parameters
            {"id": promo_id, "now": now},
        )
        row = cursor.fetchone()
        if row is None:  # cancelled, ended or finished meanwhile: nobody is told about a dead deal
            return FanOutBatch(promo_id, 0, more=False, skipped="stopped")
        product_id, after = row
        if after == 0:
            # The first batch is one delivery batch: it commits in milliseconds and the first subscribers are
            # being sent to while the full-size batches follow.
            size = min(size, settings.NOTIFICATION_BATCH_SIZE)
        # The (product_id, id) index walks the batch in order: no sort of the product's subscriptions.
        cursor.execute(
            f"""
            WITH batch AS (
                SELECT id FROM {_SUBSCRIPTION}
                 WHERE product_id = %(product)s AND id > %(after)s
                   -- Consent (promotions.consent): only addresses that confirmed and did not unsubscribe.
                   AND confirmed_at IS NOT NULL AND unsubscribed_at IS NULL
                 ORDER BY id LIMIT %(size)s
            ), written AS (
                INSERT INTO {_NOTIFICATION}
                       (promo_id, subscription_id, channel, status, attempts, next_attempt_at, last_error,
                        idempotency_key, created_at)
                SELECT %(promo)s, id, %(channel)s, 'pending', 0, %(now)s, '', gen_random_uuid(), %(now)s FROM batch
                ON CONFLICT (promo_id, subscription_id, channel) DO NOTHING
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch), (SELECT count(*) FROM written)
            """,  # noqa: S608
            {
                "product": product_id,
                "after": after,
                "size": size,
                "promo": promo_id,
                "now": now,
                "channel": Channel.EMAIL.value,
            },
        )
        walked, last_id, queued = cursor.fetchone()
        more = walked == size
        cursor.execute(
            f"""
            UPDATE {_PROMO} SET fan_out_cursor = %(cursor)s, fan_out_at = %(now)s, notifications_queued = %(done)s
             WHERE id = %(id)s
            """,  # noqa: S608
            {"id": promo_id, "cursor": last_id or after, "now": now, "done": not more},
        )
    if not more:
        log.info("promo.fan_out_finished", promo_id=promo_id)
    return FanOutBatch(promo_id, int(queued), more=more, after=after, through=last_id or after)


def promos_fan_out(
    *,
    promo_ids: list[int],
    now: datetime,
    on_batch: Callable[[FanOutBatch], object],
    batch_size: int | None = None,
    budget_seconds: float | None = None,
) -> FanOutRun:
    """Walk the subscribers of ``promo_ids`` a batch per promo in turn, calling ``on_batch(batch)`` after each
    batch commits (the caller publishes its deliveries), until every walk is done or ``budget_seconds`` passed.

    Round robin, so each promo of a chunk gets its first batch - its first deliveries - within one round. Promos
    another fan-out is writing are left to it, and those not active any more are dropped. What is left when the
    budget runs out is returned in ``FanOutRun.unfinished``."""
    budget = settings.NOTIFICATION_FAN_OUT_TASK_SECONDS if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    run, queue, skipped = FanOutRun(), deque(promo_ids), 0
    while queue:
        if run.batches and time.monotonic() >= deadline:  # one batch at least, so every run makes progress
            run.unfinished = list(queue)
            break
        batch = promo_fan_out_batch(promo_id=queue.popleft(), now=now, batch_size=batch_size)
        if batch.skipped:
            skipped += 1
            continue
        run.queued, run.batches = run.queued + batch.queued, run.batches + 1
        on_batch(batch)
        if batch.more:
            queue.append(batch.promo_id)
    if skipped:
        # Not active any more (cancelled or ended before its fan-out ran), already queued, or being queued.
        log.info("promo.fan_out_skipped", promos=skipped)
    return run
