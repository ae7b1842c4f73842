"""``manage.py seed_demo``: products, subscribers and promos starting over the next minutes, so a person
running the system sees promos go live and notifications go out. Runs once: when the demo products exist it
says so in one line and changes nothing (``make run`` and ``docker compose up`` call it at every start);
``--again`` adds a new wave."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from promotions import selectors, services, tasks

_PRODUCTS = [
    ("Espresso machine", "249.00"),
    ("Noise-cancelling headphones", "199.00"),
    ("Trail shoes", "129.00"),
]


class Command(BaseCommand):
    help = "Create demo products, subscribers and promos that start over the next few minutes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--subscribers", type=int, default=25, help="Subscribers per product (default 25).")
        parser.add_argument("--promos", type=int, default=6, help="Promos to create (default 6).")
        parser.add_argument(
            "--every", type=int, default=30, help="Seconds between consecutive promo starts (default 30)."
        )
        parser.add_argument(
            "--again", action="store_true", help="Add a new wave even though the demo data exists already."
        )
        parser.add_argument("--dry-run", action="store_true", help="Say what would be created; write nothing.")

    @transaction.atomic
    def handle(
        self, *args: Any, subscribers: int, promos: int, every: int, again: bool, dry_run: bool, **options: Any
    ) -> None:
        names = [name for name, _ in _PRODUCTS]
        existing = selectors.products_count_named(names=names)
        if existing and not again:
            self.stdout.write(
                f"demo data already there ({existing} demo products): nothing created; --again adds a new wave."
            )
            return
        if dry_run:
            self.stdout.write(
                f"would create {len(_PRODUCTS)} products, {subscribers} subscribers each, {promos} promos."
            )
            return
        now = timezone.now()
        products = [services.product_create(name=name, price=Decimal(price)) for name, price in _PRODUCTS]
        for product in products:
            for n in range(subscribers):
                # Confirmed as created: example.com is nobody's mailbox (RFC 2606), and the demo is there to
                # show notifications going out. Real addresses subscribe through the API and confirm.
                services.subscription_create(product=product, email=f"shopper{n}@example.com", confirmed_at=now)
        for n in range(promos):
            starts_at = now + timedelta(seconds=15 + n * every)
            promo = services.promo_create(
                product=products[n % len(products)],
                title=f"Flash deal #{n + 1}",
                discount_percent=10 + 5 * (n % 8),
                starts_at=starts_at,
                ends_at=starts_at + timedelta(minutes=3),
                now=now,
            )
            self.stdout.write(f"promo {promo.pk} '{promo.title}' starts at {starts_at:%H:%M:%S} UTC")
        tasks.schedule_promptly()
        self.stdout.write(
            self.style.SUCCESS(f"{len(products)} products, {subscribers} subscribers each, {promos} promos.")
        )
