"""Input validation and output shapes of the API; times are ISO 8601 with a UTC offset (a time without one is
refused, never guessed)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

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


class ProductInput(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=200, validators=[validate_single_line])
    price = serializers.DecimalField(max_digits=10, decimal_places=2, min_value=0)


class SubscriptionInput(serializers.Serializer[Any]):
    email = serializers.EmailField(max_length=254)


class PromoInput(serializers.Serializer[Any]):
    product_id = serializers.IntegerField(min_value=1)
    title = serializers.CharField(max_length=200, validators=[validate_single_line])
    discount_percent = serializers.IntegerField(min_value=1, max_value=99)
    starts_at = OffsetDateTimeField()
    ends_at = OffsetDateTimeField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["ends_at"] <= attrs["starts_at"]:
            raise serializers.ValidationError({"ends_at": ["Must be later than starts_at."]})
        return attrs


class PromoListQuery(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=PromoStatus.values, required=False)
    #: A page: the list is public, and each promo costs four index scans for its counts.
    limit = serializers.IntegerField(min_value=1, max_value=500, default=100)
    offset = serializers.IntegerField(min_value=0, max_value=2**62, default=0)  # Postgres' OFFSET is a bigint


class PromoOutput(serializers.ModelSerializer[FlashPromo]):
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
