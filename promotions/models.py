"""Models of the promotions domain.

A ``FlashPromo`` moves scheduled -> active -> ended (or to cancelled); ``Notification`` holds one row per
promo x subscription x channel and is the durable outbox that the delivery tasks drain.
"""

from __future__ import annotations

import unicodedata
import uuid

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

#: Unicode categories a name or title may not hold: control characters (Cc: line breaks, tabs, escapes), line
#: and paragraph separators, and format characters (Cf) - bidi overrides and isolates (U+202A-202E,
#: U+2066-2069) that make a subject read backwards, zero-width characters (U+200B-200D) that make two titles
#: look alike, the BOM (U+FEFF). Cf holds the zero-width joiner of emoji sequences too: a title shows the
#: emoji apart rather than let an invisible character through.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}


def validate_single_line(value: str) -> None:
    """Refuse control, format and line-break characters: names and titles go into notification subjects, where
    email headers and SNS subjects refuse control characters (the whole promo's notifications would fail) and
    invisible ones disguise what the reader sees. The message names the first one and its position."""
    for position, char in enumerate(value, start=1):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise ValidationError(
                f"Must be one line of visible text: no line breaks, control characters or invisible format "
                f"characters (bidi controls, zero-width, BOM); found U+{ord(char):04X} at character {position}.",
                code="invisible_or_control_character",
            )


class Product(models.Model):
    name = models.CharField(max_length=200, validators=[validate_single_line])
    price = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(0)])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class PromoStatus(models.TextChoices):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    ENDED = "ended"
    CANCELLED = "cancelled"


class FlashPromo(models.Model):
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="promos")
    title = models.CharField(max_length=200, validators=[validate_single_line])
    discount_percent = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(99)])
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=PromoStatus.choices, default=PromoStatus.SCHEDULED)
    activated_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Set when a countdown task has been published for the transition, so each sweep publishes it once.
    activation_enqueued = models.BooleanField(default=False)
    end_enqueued = models.BooleanField(default=False)
    # Set in the transaction that writes the last batch of the promo's notification rows. Activation commits
    # first and the fan-out runs in tasks of its own, so a promo goes live in milliseconds however many
    # subscribers it has; an active promo whose fan-out made no progress for a grace period is resumed by the sweep.
    notifications_queued = models.BooleanField(default=False, db_default=False)
    # The fan-out's durable progress (promotions.fanout): the last subscription id queued, and the time of the
    # run that queued it. A fan-out resumed after a crash starts after the cursor; the sweep's recovery looks at
    # the time.
    fan_out_cursor = models.BigIntegerField(default=0, db_default=0)
    fan_out_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["starts_at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="promo_ends_after_start"),
            models.CheckConstraint(
                condition=Q(discount_percent__gte=1, discount_percent__lte=99), name="promo_discount_1_to_99"
            ),
        ]
        # Partial indexes keep each sweep proportional to the promos it touches, not to the table.
        indexes = [
            models.Index(fields=["starts_at"], name="promo_scheduled_start", condition=Q(status="scheduled")),
            models.Index(fields=["ends_at"], name="promo_active_end", condition=Q(status="active")),
            models.Index(fields=["ended_at"], name="promo_finished_at", condition=Q(status__in=["ended", "cancelled"])),
            models.Index(fields=["status", "starts_at"], name="promo_status_start"),
            models.Index(
                fields=["activated_at"],
                name="promo_awaiting_fan_out",
                condition=Q(status="active", notifications_queued=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.status})"


class Subscription(models.Model):
    """An address's wish to hear of a product's promos. Double opt-in (``promotions.consent``): it is notified
    only once confirmed through the link mailed to it, and not after it unsubscribed."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="subscriptions")
    email = models.EmailField()
    created_at = models.DateTimeField(auto_now_add=True)
    #: When the address confirmed (clicked the link mailed to it); NULL: never, and it is never notified.
    confirmed_at = models.DateTimeField(null=True, blank=True)
    #: When it unsubscribed; NULL: it did not. Set, nothing more is sent to it, pending messages included.
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    #: When the last confirmation request was mailed: one address gets at most one per
    #: ``SUBSCRIPTION_CONFIRM_RESEND_INTERVAL_SECONDS``.
    confirmation_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["product", "email"], name="subscription_unique_email")]
        indexes = [
            # The fan-out's keyset walk (product_id = ? AND id > ? ORDER BY id LIMIT n) reads each batch in order.
            models.Index(fields=["product", "id"], name="subscription_product_walk"),
            # The resend bound looks an address up across products; the unique key leads with the product.
            models.Index(fields=["email"], name="subscription_email"),
        ]

    def __str__(self) -> str:
        return f"{self.email} -> product {self.product_id}"

    @property
    def notifiable(self) -> bool:
        return self.confirmed_at is not None and self.unsubscribed_at is None


class Channel(models.TextChoices):
    EMAIL = "email"


class NotificationStatus(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class Notification(models.Model):
    promo = models.ForeignKey(FlashPromo, on_delete=models.CASCADE, related_name="notifications")
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="notifications")
    channel = models.CharField(max_length=16, choices=Channel.choices, default=Channel.EMAIL)
    status = models.CharField(max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # While ``sending``: the claim that owns the row and when that claim lapses (a dead worker's rows are
    # reclaimed after it), so a late worker cannot overwrite a newer claim's outcome.
    claim_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # Sent with every delivery attempt so the provider can drop a duplicate after a redelivery.
    idempotency_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    # When the row was given up on (``failed``): what ``notifications retry --since`` filters on.
    failed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["promo", "subscription", "channel"], name="notification_unique_target")
        ]
        indexes = [
            models.Index(fields=["next_attempt_at"], name="notification_due", condition=Q(status="pending")),
            models.Index(fields=["lease_expires_at"], name="notification_leased", condition=Q(status="sending")),
            models.Index(fields=["promo", "status"], name="notification_promo_status"),
        ]

    def __str__(self) -> str:
        return f"notification {self.pk} ({self.status})"
