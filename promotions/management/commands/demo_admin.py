"""``manage.py demo_admin --password-file var/admin-password``: the local superuser whose password is the one
in the file - created when missing, its password (and admin rights) set again when it exists - so the
password ``make run`` prints always logs in to the admin, as it does to Flower."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction


class Command(BaseCommand):
    help = "Create the local superuser, or set its password, from a password file (make run's var/admin-password)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--password-file", type=Path, required=True, help="File whose first line is the password to set."
        )
        parser.add_argument("--username", default="admin", help="User name of the superuser (default admin).")
        parser.add_argument(
            "--email", default="admin@example.com", help="Email of a superuser created (default admin@example.com)."
        )
        parser.add_argument("--dry-run", action="store_true", help="Say what would change; write nothing.")

    @transaction.atomic
    def handle(self, *args: Any, password_file: Path, username: str, email: str, dry_run: bool, **options: Any) -> None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise CommandError(f"Cannot read the password file {str(password_file)!r}: {exc.strerror}.") from None
        if not password:
            raise CommandError(f"The password file {str(password_file)!r} is empty.")
        user = get_user_model().objects.filter(username=username).first()
        verb = "would create" if dry_run else "created"
        if user is not None:
            verb = "would set the password of" if dry_run else "set the password of"
        if not dry_run:
            if user is None:
                get_user_model().objects.create_superuser(username=username, email=email, password=password)
            else:
                user.set_password(password)
                user.is_active = user.is_staff = user.is_superuser = True
                user.save(update_fields=["password", "is_active", "is_staff", "is_superuser"])
        self.stdout.write(f"{verb} superuser {username!r} (password from {password_file})")
