"""``manage.py notifications``: the operator's handle on the delivery outbox.

    notifications retry --status failed [--promo ID] [--since 2h|ISO] [--dry-run]

The work lives in ``promotions.notifications``; this module parses and prints.
"""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from observability.deadletters.command import parse_time
from promotions.models import NotificationStatus
from promotions.resend import notifications_retry


def _promo_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a promo id (a whole number from 1).")
    return int(value)


class Command(BaseCommand):
    help = "Resend failed notifications."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{retry}")
        retry = sub.add_parser(
            "retry",
            help="Put failed notifications of live promos back as due: the next queue sweep sends them, with a "
            "fresh attempt budget and their idempotency keys.",
        )
        retry.add_argument(
            "--status",
            required=True,
            choices=[NotificationStatus.FAILED.value],
            help="Which notifications to resend: failed (the only status an operator resends).",
        )
        retry.add_argument("--promo", type=_promo_id, help="Only the notifications of this promo (its id).")
        retry.add_argument(
            "--since",
            type=parse_time,
            help="Only those that failed at or after this time: a duration before now (30m, 2h, 7d) or ISO 8601.",
        )
        retry.add_argument("--dry-run", action="store_true", help="Count what would be resent; change nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        count = notifications_retry(
            now=timezone.now(),
            status=NotificationStatus(options["status"]),
            promo_id=options["promo"],
            since=options["since"],
            dry_run=options["dry_run"],
        )
        if options["dry_run"]:
            self.stdout.write(f"Dry run: {count} failed notification(s) would be resent; nothing changed.")
        else:
            self.stdout.write(f"{count} failed notification(s) due again; the next queue sweep sends them.")
