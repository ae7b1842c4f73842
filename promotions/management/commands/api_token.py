"""``manage.py api_token USERNAME``: issue an API bearer token for a staff user and print it - the only time it
is shown: the database keeps its digest (django-rest-knox)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from knox.models import AuthToken


class Command(BaseCommand):
    help = "Issue a new API bearer token for a staff user and print it (shown once; it expires)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="An existing staff user (see createsuperuser).")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}: create one with 'manage.py createsuperuser'.")
        if not user.is_staff:
            raise CommandError(f"User {username!r} is not staff: API writes need a staff user.")
        instance, token = AuthToken.objects.create(user=user)
        self.stdout.write(token)
        # On stderr: a script reads the token alone from stdout.
        self.stderr.write(f"expires {instance.expiry:%Y-%m-%d %H:%M} UTC; shown once, stored hashed")
