"""Input validation and output shapes of the API; times are ISO 8601 with a UTC offset (a time without one is
refused, never guessed). Write bodies refuse fields they do not know. The rules of a promo's window (not in
the past, not beyond the horizon, end after start) are the domain's: ``services.promo_validate_schedule``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from promotions.models import FlashPromo, PromoStatus, validate_single_line


class OffsetDateTimeField(serializers.DateTimeField):
    """An ISO 8601 time with its UTC offset (``Z`` or ``+02:00``): a local time without one would be taken as
    UTC and a promo sent at 10:00 Madrid time would go live an hour or two late."""

    default_error_messages = {"naive": "Include a UTC offset, e.g. 2030-06-01T10:00:00+02:00 or 2030-06-01T08:00:00Z."}

    def enforce_timezone(self, value: datetime) -> datetime:
        # Where DRF would make a parsed time aware in the current time zone - whatever parser read it.
        if timezone.is_naive(value):
            self.fail("naive")
        return super().enforce_timezone(value)


class StrictInput(serializers.Serializer[Any]):
    """A write body that refuses fields it does not declare, each under its own name: a client sending
    ``"status": "active"`` or a misspelt ``"ends"`` learns it was not applied instead of getting a 201."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, Mapping) else []
        accepted = f"this endpoint accepts {', '.join(self.fields)}" if self.fields else "this endpoint takes no body"
        errors: dict[str, Any] = {name: [f"Unknown field: {accepted}."] for name in unknown}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({**errors, **exc.detail}) from exc  # type: ignore[dict-item]
        if errors:
            raise serializers.ValidationError(errors)
        return dict(value)


_TIME_HELP = "ISO 8601 with a UTC offset (Z or +02:00)"
_WINDOW_HELP = (
    f"starts_at at most {settings.PROMO_START_PAST_TOLERANCE_SECONDS} s in the past when set or moved; both times "
    f"at most {settings.PROMO_MAX_HORIZON_DAYS} days ahead; ends_at later than starts_at and at most "
    f"{settings.PROMO_MAX_DURATION_DAYS} days after it"
)


class ProductInput(StrictInput):
    name = serializers.CharField(
        max_length=200, validators=[validate_single_line], help_text="1-200 characters, one line"
    )
    price = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=0, help_text="0 to 99999999.99, two decimals at most"
    )


class SubscriptionInput(StrictInput):
    email = serializers.EmailField(max_length=254, help_text="an email address, at most 254 characters")


class PromoInput(StrictInput):
    product_id = serializers.IntegerField(min_value=1, help_text="id of an existing product")
    title = serializers.CharField(
        max_length=200, validators=[validate_single_line], help_text="1-200 characters, one line"
    )
    discount_percent = serializers.IntegerField(min_value=1, max_value=99, help_text="whole percent, 1-99")
    starts_at = OffsetDateTimeField(help_text=f"{_TIME_HELP}; {_WINDOW_HELP}")
    ends_at = OffsetDateTimeField(help_text=f"{_TIME_HELP}; {_WINDOW_HELP}")


class PromoUpdate(StrictInput):
    """A scheduled promo's changes: any of these, the others kept; the window they make is checked whole."""

    title = serializers.CharField(
        max_length=200, validators=[validate_single_line], required=False, help_text="1-200 characters, one line"
    )
    starts_at = OffsetDateTimeField(required=False, help_text=f"{_TIME_HELP}; {_WINDOW_HELP}")
    ends_at = OffsetDateTimeField(required=False, help_text=f"{_TIME_HELP}; {_WINDOW_HELP}")


class PromoListQuery(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=PromoStatus.values, required=False)
    #: A page: the list is public, and each promo costs four index scans for its counts.
    limit = serializers.IntegerField(min_value=1, max_value=500, default=100)
    offset = serializers.IntegerField(min_value=0, max_value=2**62, default=0)  # Postgres' OFFSET is a bigint


class PublicPromoOutput(serializers.ModelSerializer[FlashPromo]):
    """A promo as anyone sees it: what it offers and when, nothing of its delivery."""

    class Meta:
        model = FlashPromo
        fields = ["id", "product_id", "title", "discount_percent", "status", "starts_at", "ends_at"]


class PromoOutput(serializers.ModelSerializer[FlashPromo]):
    """A promo as staff with the view permission see it: its state changes, lag and notification counts."""

    activation_lag_seconds = serializers.SerializerMethodField()
    notifications = serializers.SerializerMethodField()

    class Meta:
        model = FlashPromo
        fields = [
            "id",
            "product_id",
            "title",
            "discount_percent",
            "status",
            "starts_at",
            "ends_at",
            "activated_at",
            "ended_at",
            "activation_lag_seconds",
            "notifications",
        ]

    def get_activation_lag_seconds(self, promo: FlashPromo) -> float | None:
        if promo.activated_at is None:
            return None
        return round((promo.activated_at - promo.starts_at).total_seconds(), 3)

    def get_notifications(self, promo: FlashPromo) -> dict[str, int]:
        """Counts by status, annotated by ``selectors.promos_list``."""
        return {
            status: getattr(promo, f"notifications_{status}") for status in ("pending", "sending", "sent", "failed")
        }
