"""``manage.py api_token USERNAME``: print the API bearer token of a staff user (created if needed)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Print the API bearer token of a staff user, creating the token if the user has none."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="An existing staff user (see createsuperuser).")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}: create one with 'manage.py createsuperuser'.")
        if not user.is_staff:
            raise CommandError(f"User {username!r} is not staff: API writes need a staff user.")
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
