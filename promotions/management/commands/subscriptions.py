"""``manage.py subscriptions``: the operator's handle on consent.

    subscriptions request-confirmation [--product ID] [--limit N] [--dry-run]

Asks subscriptions never confirmed (those that predate double opt-in among them) to confirm, bounded like the
API: one request per address per ``SUBSCRIPTION_CONFIRM_RESEND_INTERVAL_SECONDS``. The work lives in
``promotions.consent``; this module parses and prints.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from promotions import consent, tasks


class Command(BaseCommand):
    help = "Ask unconfirmed subscriptions to confirm."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{request-confirmation}")
        ask = sub.add_parser(
            "request-confirmation",
            help="Mail a confirmation request to subscriptions never confirmed nor unsubscribed, at most one per "
            "address per resend interval; only those who click its link are notified.",
        )
        ask.add_argument("--product", type=int, help="Only the subscriptions of this product id.")
        ask.add_argument(
            "--limit", type=int, default=1000, help="Subscriptions to look at in this run, oldest first (default 1000)."
        )
        ask.add_argument("--dry-run", action="store_true", help="Count what would be asked; mail nobody.")

    def handle(self, *args: Any, product: int | None, limit: int, dry_run: bool, **options: Any) -> None:
        awaiting = consent.subscriptions_awaiting_confirmation(product_id=product).order_by("id")[:limit]
        if dry_run:
            self.stdout.write(f"would look at {awaiting.count()} unconfirmed subscription(s); nothing sent.")
            return
        now, requested, looked_at = timezone.now(), 0, 0
        for subscription in awaiting:
            looked_at += 1
            with transaction.atomic():
                if consent.subscription_request_confirmation(subscription=subscription, now=now):
                    tasks.request_confirmation(subscription.pk)
                    requested += 1
        self.stdout.write(
            f"{requested} confirmation request(s) published for {looked_at} unconfirmed subscription(s); the rest "
            "were sent one within the resend interval."
        )
