"""Input validation and output shapes of the API; times are ISO 8601 with offsets."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from promotions.models import FlashPromo, PromoStatus


class ProductInput(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=200)
    price = serializers.DecimalField(max_digits=10, decimal_places=2, min_value=0)


class SubscriptionInput(serializers.Serializer[Any]):
    email = serializers.EmailField(max_length=254)


class PromoInput(serializers.Serializer[Any]):
    product_id = serializers.IntegerField(min_value=1)
    title = serializers.CharField(max_length=200)
    discount_percent = serializers.IntegerField(min_value=1, max_value=99)
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["ends_at"] <= attrs["starts_at"]:
            raise serializers.ValidationError({"ends_at": ["Must be later than starts_at."]})
        return attrs


class PromoListQuery(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=PromoStatus.values, required=False)


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
