"""Consent of subscribers: double opt-in, confirmation and unsubscribe links, unsubscribing.

A subscription is notified only once its address confirmed it (``confirmed_at``) and while it has not
unsubscribed (``unsubscribed_at``). Subscribing stores the row unconfirmed and asks for a confirmation, at most
once per address per ``SUBSCRIPTION_CONFIRM_RESEND_INTERVAL_SECONDS`` whatever the product, so nobody can flood a
third party's mailbox through the public endpoint. Links are signed with ``SECRET_KEY`` (``django.core.signing``,
so ``SECRET_KEY_FALLBACKS`` keeps old links working through a key rotation): a confirmation link expires after
``SUBSCRIPTION_CONFIRM_MAX_AGE_SECONDS``, an unsubscribe link never does (RFC 8058 one-click, sent in every
notification). Unsubscribing gives up on the subscription's pending notifications at once; the delivery claim
skips any that a fan-out wrote meanwhile (``notifications._claim``).

Imports models and channels; imported by the API, the tasks, the admin, the commands and the delivery claim.
Addresses never reach a log line: subscriptions are named by id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import structlog
from django.conf import settings
from django.core import signing
from django.db import connection, transaction
from django.db.models import QuerySet
from django.urls import reverse

from observability.errors import PermanentError, TransientError
from promotions.channels import OutgoingMessage, get_backend
from promotions.models import Notification, Product, Subscription

__all__ = [
    "UNSUBSCRIBED",
    "InvalidLinkError",
    "SubscribeResult",
    "confirm_url",
    "notifications_cancel_for_subscription",
    "subscription_confirm",
    "subscription_of_confirm_link",
    "subscription_of_unsubscribe_link",
    "subscription_request",
    "subscription_request_confirmation",
    "subscription_send_confirmation",
    "subscription_unsubscribe",
    "subscriptions_awaiting_confirmation",
    "unsubscribe_url",
]

log = structlog.get_logger(__name__)

_CONFIRM_SALT = "promotions.consent.confirm"
_UNSUBSCRIBE_SALT = "promotions.consent.unsubscribe"
_NOTIFICATION = Notification._meta.db_table
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Names the idempotency keys of confirmation messages (uuid5), so a redelivered task's message has the same key.
_CONFIRMATION_KEYS = uuid.UUID("6f1c1f0e-5a43-4d36-9a55-2c8f6f5b7c21")


class InvalidLinkError(Exception):
    """A confirmation or unsubscribe link that is tampered with, expired or superseded; the text says which."""


@dataclass(frozen=True)
class SubscribeResult:
    """What a subscribe request did - for the caller, never for the client (the answer must not tell)."""

    subscription_id: int
    #: A confirmation request is to be mailed (``tasks.request_confirmation`` publishes it).
    confirmation_requested: bool


def confirm_url(*, subscription_id: int, issued_at: datetime) -> str:
    # The issue time rides in the payload: a link mailed before an unsubscribe must not undo it.
    token = signing.dumps({"s": subscription_id, "t": _microseconds(issued_at)}, salt=_CONFIRM_SALT)
    return _link("subscription-confirm") + token


def _microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def unsubscribe_url(*, subscription_id: int) -> str:
    token = signing.Signer(salt=_UNSUBSCRIBE_SALT).sign(str(subscription_id))
    return _link("subscription-unsubscribe") + token


@cache
def _link(route: str) -> str:
    """The absolute link of ``route`` up to its token, resolved once per process: ``reverse`` took 190 us a
    call, most of the unsubscribe link's cost in a 500-message batch (a signed token's characters need no
    quoting)."""
    return settings.PUBLIC_BASE_URL + reverse(route, args=["-"]).removesuffix("-")


def subscription_request(*, product: Product, email: str, now: datetime) -> SubscribeResult:
    """Subscribe ``email`` to ``product`` unconfirmed (or find its row), and claim a confirmation request for it
    unless it is confirmed and subscribed already, or its address was sent one within the resend interval."""
    address = email.strip().lower()
    subscription, _ = Subscription.objects.get_or_create(product=product, email=address)
    requested = _claim_confirmation(subscription_id=subscription.pk, email=address, now=now)
    log.info("subscription.requested", subscription_id=subscription.pk, confirmation_requested=requested)
    return SubscribeResult(subscription.pk, requested)


def _claim_confirmation(*, subscription_id: int, email: str, now: datetime) -> bool:
    with transaction.atomic():
        # Every row of the address, locked: two subscribe requests at once (to two products) mail it once.
        rows = list(
            Subscription.objects.select_for_update()
            .filter(email=email)
            .values_list("pk", "confirmed_at", "unsubscribed_at", "confirmation_sent_at")
        )
        target = next((row for row in rows if row[0] == subscription_id), None)
        if target is None or (target[1] is not None and target[2] is None):
            return False  # deleted meanwhile (with its product), or confirmed and subscribed: nothing to ask
        cutoff = now - timedelta(seconds=settings.SUBSCRIPTION_CONFIRM_RESEND_INTERVAL_SECONDS)
        if any(sent_at is not None and sent_at > cutoff for *_, sent_at in rows):
            return False
        Subscription.objects.filter(pk=subscription_id).update(confirmation_sent_at=now)
        return True


def subscriptions_awaiting_confirmation(*, product_id: int | None = None) -> QuerySet[Subscription]:
    """Subscriptions never confirmed and never unsubscribed (those that predate consent among them)."""
    rows = Subscription.objects.filter(confirmed_at__isnull=True, unsubscribed_at__isnull=True)
    return rows if product_id is None else rows.filter(product_id=product_id)


def subscription_request_confirmation(*, subscription: Subscription, now: datetime) -> bool:
    """An operator's confirmation request for ``subscription`` (an admin action, a command), bounded like a
    subscribe request; True if one is to be mailed."""
    return _claim_confirmation(subscription_id=subscription.pk, email=subscription.email, now=now)


def subscription_send_confirmation(*, subscription_id: int) -> dict[str, int]:
    """Mail the confirmation request claimed for ``subscription_id`` through the channel backend. A transient
    channel failure raises ``TransientError`` (the task retries), a refused address ``PermanentError``."""
    subscription = Subscription.objects.select_related("product").filter(pk=subscription_id).first()
    if subscription is None or subscription.notifiable or subscription.confirmation_sent_at is None:
        return {"sent": 0}  # deleted with its product, or confirmed meanwhile (another product's link)
    issued_at = subscription.confirmation_sent_at
    link = confirm_url(subscription_id=subscription.pk, issued_at=issued_at)
    hours = settings.SUBSCRIPTION_CONFIRM_MAX_AGE_SECONDS // 3600
    message = OutgoingMessage(
        notification_id=0,  # not an outbox row: the outcome is read here
        idempotency_key=str(uuid.uuid5(_CONFIRMATION_KEYS, f"{subscription.pk}:{issued_at.isoformat()}")),
        recipient=subscription.email,
        subject=" ".join(f"Confirm your subscription to {subscription.product.name}".split()),
        body=(
            f"Someone - we hope you - asked to be told of flash promos on {subscription.product.name} at this address."
            f"\n\nConfirm within {hours} hours: {link}\n\n"
            "If it was not you, ignore this message: nothing more is sent to you."
        ),
    )
    outcomes = list(get_backend(settings.NOTIFICATION_BACKEND).send([message]))
    failure = outcomes[0][1] if outcomes else None
    if failure is not None:
        # The failure text has addresses masked (channels): it may be logged and stored in a dead letter.
        raise (PermanentError if failure.permanent else TransientError)(failure.error)
    log.info("subscription.confirmation_sent", subscription_id=subscription.pk)
    return {"sent": 1}


def _confirm_payload(token: str) -> tuple[int, int]:
    """The subscription id and issue time (microseconds) a confirmation link carries, or ``InvalidLinkError``."""
    try:
        payload = signing.loads(token, salt=_CONFIRM_SALT, max_age=settings.SUBSCRIPTION_CONFIRM_MAX_AGE_SECONDS)
    except signing.SignatureExpired:
        raise InvalidLinkError("This confirmation link has expired: subscribe again to get a new one.") from None
    except signing.BadSignature:
        raise InvalidLinkError("This confirmation link is not valid.") from None
    if not (isinstance(payload, dict) and isinstance(payload.get("s"), int) and isinstance(payload.get("t"), int)):
        raise InvalidLinkError("This confirmation link is not valid.")
    return payload["s"], payload["t"]


def _unless_superseded(subscription: Subscription | None, issued_at: int) -> Subscription:
    """``subscription``, unless it is gone or unsubscribed after the link was issued (``InvalidLinkError``)."""
    if subscription is None:
        raise InvalidLinkError("This subscription no longer exists.")
    unsubscribed_at = subscription.unsubscribed_at
    if not subscription.notifiable and unsubscribed_at is not None and issued_at < _microseconds(unsubscribed_at):
        raise InvalidLinkError("This link was sent before you unsubscribed: subscribe again to get a new one.")
    return subscription


def subscription_of_confirm_link(*, token: str) -> Subscription:
    """The subscription (with its product) a confirmation link would confirm, changing nothing: what the link's
    page shows before its button is pressed. Raises ``InvalidLinkError`` as ``subscription_confirm`` would."""
    subscription_id, issued_at = _confirm_payload(token)
    subscription = Subscription.objects.select_related("product").filter(pk=subscription_id).first()
    return _unless_superseded(subscription, issued_at)


def subscription_confirm(*, token: str, now: datetime) -> Subscription:
    """Confirm the subscription of a confirmation link; confirming again changes nothing. Raises
    ``InvalidLinkError`` (nothing changed) for a tampered, expired or superseded link."""
    subscription_id, issued_at = _confirm_payload(token)
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().filter(pk=subscription_id).first()
        subscription = _unless_superseded(locked, issued_at)
        if subscription.notifiable:
            return subscription
        subscription.confirmed_at, subscription.unsubscribed_at = now, None
        subscription.save(update_fields=["confirmed_at", "unsubscribed_at"])
    log.info("subscription.confirmed", subscription_id=subscription.pk, product_id=subscription.product_id)
    return subscription


def subscription_unsubscribe(*, token: str, now: datetime) -> int:
    """Unsubscribe the subscription of an unsubscribe link and give up on its pending notifications, in one
    transaction; repeating it changes nothing. Returns the subscription id. Raises ``InvalidLinkError`` for a
    tampered link. A notification already handed to the channel (``sending``) may still go out."""
    subscription_id = _unsubscribe_id(token)
    with transaction.atomic():
        changed = Subscription.objects.filter(pk=subscription_id, unsubscribed_at__isnull=True).update(
            unsubscribed_at=now
        )
        cancelled = notifications_cancel_for_subscription(subscription_id=subscription_id, now=now)
    if changed:
        log.info("subscription.unsubscribed", subscription_id=subscription_id, pending_cancelled=cancelled)
    return subscription_id


def _unsubscribe_id(token: str) -> int:
    try:
        return int(signing.Signer(salt=_UNSUBSCRIBE_SALT).unsign(token))
    except (signing.BadSignature, ValueError):
        raise InvalidLinkError("This unsubscribe link is not valid.") from None


def subscription_of_unsubscribe_link(*, token: str) -> Subscription | None:
    """The subscription (with its product) an unsubscribe link would unsubscribe, changing nothing - ``None``
    when it was deleted since (unsubscribing it then is a no-op, answered as done). Raises ``InvalidLinkError``
    for a tampered link."""
    return Subscription.objects.select_related("product").filter(pk=_unsubscribe_id(token)).first()


def notifications_cancel_for_subscription(*, subscription_id: int, now: datetime) -> int:
    """Give up on the pending notifications of an unsubscribed subscription: ``failed``, never delivered."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {_NOTIFICATION}
               SET status = 'failed', failed_at = %(now)s, last_error = %(why)s
             WHERE subscription_id = %(id)s AND status = 'pending'
            """,  # noqa: S608 - the table name comes from model metadata, values are parameters
            {"id": subscription_id, "now": now, "why": UNSUBSCRIBED},
        )
        return int(cursor.rowcount)


#: ``last_error`` of a notification given up on because its subscriber unsubscribed before it was sent.
UNSUBSCRIBED = "the subscriber unsubscribed"
