"""Django admin for products, promos, subscriptions and notifications (read-mostly for the outbox)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from promotions import consent, services, tasks
from promotions.models import FlashPromo, Notification, NotificationStatus, Product, PromoStatus, Subscription
from promotions.resend import notifications_retry


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin[Product]):
    list_display = ["id", "name", "price", "created_at"]
    search_fields = ["name"]


@admin.register(FlashPromo)
class FlashPromoAdmin(admin.ModelAdmin[FlashPromo]):
    list_display = [
        "id",
        "title",
        "product",
        "discount_percent",
        "status",
        "starts_at",
        "ends_at",
        "activated_at",
    ]
    list_filter = ["status"]
    search_fields = ["title", "product__name"]
    readonly_fields = [
        "status",
        "activated_at",
        "ended_at",
        "activation_enqueued",
        "end_enqueued",
        # Set only by the fan-out: ticked by hand, it would stop the promo's notifications for good.
        "notifications_queued",
        # The fan-out's progress: moved by hand, it would skip subscribers or write nothing more.
        "fan_out_cursor",
        "fan_out_at",
        "created_at",
    ]
    actions = ["cancel"]

    def save_model(self, request: HttpRequest, obj: FlashPromo, form: Any, change: bool) -> None:
        if {"starts_at", "ends_at"} & set(form.changed_data):
            # New times need new countdowns: the sweep publishes them again.
            obj.activation_enqueued = obj.end_enqueued = False
        super().save_model(request, obj, form, change)
        tasks.schedule_promptly()

    @admin.action(description="Cancel the selected scheduled or active promos")
    def cancel(self, request: HttpRequest, queryset: QuerySet[FlashPromo]) -> None:
        # Through the service, as the API's cancel: the same conditional update, the same ``promo.cancelled`` line.
        now, cancelled = timezone.now(), 0
        for promo_id in queryset.filter(status__in=[PromoStatus.SCHEDULED, PromoStatus.ACTIVE]).values_list(
            "pk", flat=True
        ):
            try:
                cancelled += services.promo_cancel(promo_id=promo_id, now=now)
            except services.PromoConflictError:
                continue  # it ended meanwhile: nothing left to cancel
        self.message_user(request, f"{cancelled} promo(s) cancelled.")


class ConsentFilter(admin.SimpleListFilter):
    title = "consent"
    parameter_name = "consent"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("confirmed", "Confirmed (notified)"), ("awaiting", "Awaiting confirmation"), ("left", "Unsubscribed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> QuerySet[Subscription]:
        if self.value() == "confirmed":
            return queryset.filter(confirmed_at__isnull=False, unsubscribed_at__isnull=True)
        if self.value() == "awaiting":
            return queryset.filter(confirmed_at__isnull=True, unsubscribed_at__isnull=True)
        if self.value() == "left":
            return queryset.filter(unsubscribed_at__isnull=False)
        return queryset


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin[Subscription]):
    list_display = ["id", "email", "product", "notified", "confirmed_at", "unsubscribed_at", "created_at"]
    list_filter = [ConsentFilter]
    search_fields = ["email"]
    raw_id_fields = ["product"]
    # Consent is the address's to give or withdraw, through its links: an operator cannot tick it.
    readonly_fields = ["confirmed_at", "unsubscribed_at", "confirmation_sent_at"]
    actions = ["request_confirmation"]

    @admin.display(boolean=True, description="notified")
    def notified(self, obj: Subscription) -> bool:
        return obj.notifiable

    @admin.action(description="Send a confirmation request to the selected unconfirmed subscriptions")
    def request_confirmation(self, request: HttpRequest, queryset: QuerySet[Subscription]) -> None:
        now, requested = timezone.now(), 0
        for subscription in queryset.filter(confirmed_at__isnull=True, unsubscribed_at__isnull=True):
            if consent.subscription_request_confirmation(subscription=subscription, now=now):
                tasks.request_confirmation(subscription.pk)
                requested += 1
        self.message_user(
            request,
            f"{requested} confirmation request(s) on their way. Confirmed or unsubscribed ones, and addresses "
            "sent one within the resend interval, are left alone.",
        )


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin[Notification]):
    list_display = ["id", "promo", "channel", "status", "attempts", "next_attempt_at", "sent_at"]
    list_filter = ["status", "channel"]
    raw_id_fields = ["promo", "subscription"]
    readonly_fields = [
        "status",
        "attempts",
        "claim_token",
        "lease_expires_at",
        "idempotency_key",
        "sent_at",
        "failed_at",
        "last_error",
    ]
    actions = ["resend_failed"]

    @admin.action(description="Resend selected failed notifications")
    def resend_failed(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        selected = list(queryset.values_list("pk", flat=True))
        resent = notifications_retry(now=timezone.now(), notification_ids=selected)
        failed = queryset.filter(status=NotificationStatus.FAILED).count()
        message = f"{resent} failed notification(s) due again; the next queue sweep sends them."
        if failed:
            message += f" {failed} left failed: their promo is no longer live."
        self.message_user(request, message)
