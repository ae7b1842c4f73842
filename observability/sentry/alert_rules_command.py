"""``manage.py sentry_alert_rules``: create or update the project's Sentry issue alert rules, kept as data in
``dashboards/sentry/alert-rules.json``, through Sentry's API; rules are matched by name, so a rerun duplicates none.

    sentry_alert_rules apply --org ORG --project PROJECT [--environment ENV] [--rules PATH] [--dry-run]

An operator's tool, not the app's configuration: its credential is read from the environment when it runs -
``SENTRY_AUTH_TOKEN`` (scope ``alerts:write``) and ``SENTRY_API_URL`` (default https://sentry.io) - and the
token is never printed. The API client is ``observability.sentry.alert_rules_api``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from observability.sentry.alert_rules_api import DEFAULT_API_URL, LOCAL_HOSTS, SentryApi


class Command(BaseCommand):
    help = "Create or update the project's Sentry issue alert rules (dashboards/sentry/alert-rules.json)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{apply}")
        apply = sub.add_parser(
            "apply",
            help="Create the rules missing from the Sentry project and update those with the same name. "
            "Reads SENTRY_AUTH_TOKEN (scope alerts:write) and SENTRY_API_URL (default https://sentry.io).",
        )
        apply.add_argument("--org", required=True, help="Sentry organization slug.")
        apply.add_argument("--project", required=True, help="Sentry project slug.")
        apply.add_argument(
            "--environment",
            help="Alert only on events of this environment (SENTRY_ENVIRONMENT of the processes, e.g. production); "
            "default: every environment.",
        )
        apply.add_argument(
            "--rules",
            type=Path,
            default=Path(settings.BASE_DIR) / "dashboards" / "sentry" / "alert-rules.json",
            help="Rules file (default: dashboards/sentry/alert-rules.json).",
        )
        apply.add_argument(
            "--dry-run", action="store_true", help="Read the existing rules, print what would change; change nothing."
        )

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        getattr(self, f"_{subcommand}")(**options)

    def _apply(
        self, *, org: str, project: str, environment: str | None, rules: Path, dry_run: bool, **options: Any
    ) -> None:
        wanted = _load_rules(rules)
        if environment:
            wanted = [{**rule, "environment": environment} for rule in wanted]
        api = SentryApi(base_url=_api_url(), token=_token(), org=org, project=project)
        existing = _ids_by_name(api.list_rules(), names={rule["name"] for rule in wanted}, project=api.project)
        for rule in wanted:
            name, rule_id = rule["name"], existing.get(rule["name"])
            if dry_run:
                self.stdout.write(
                    f"Would update rule {name!r} (id {rule_id})." if rule_id else f"Would create rule {name!r}."
                )
            elif rule_id:
                api.update_rule(rule_id, rule)
                self.stdout.write(f"Updated rule {name!r} (id {rule_id}).")
            else:
                created = api.create_rule(rule)
                self.stdout.write(f"Created rule {name!r} (id {created.get('id')}).")
        updates = sum(rule["name"] in existing for rule in wanted)
        creates = len(wanted) - updates
        if dry_run:
            self.stdout.write(f"Dry run: {creates} to create, {updates} to update in {api.project}; nothing changed.")
        else:
            self.stdout.write(f"Applied {len(wanted)} rule(s) to {api.project}: {creates} created, {updates} updated.")


def _load_rules(path: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise CommandError(f"Cannot read the rules file {path}: {error.strerror}.") from None
    except ValueError as error:
        raise CommandError(f"The rules file {path} is not JSON: {error}.") from None
    rules = document.get("rules") if isinstance(document, dict) else None
    if not isinstance(rules, list) or not all(isinstance(r, dict) and r.get("name") for r in rules):
        raise CommandError(f'The rules file {path} must hold {{"rules": [...]}}, each rule with a name.')
    repeated = sorted(name for name, count in Counter(r["name"] for r in rules).items() if count > 1)
    if repeated:
        raise CommandError(f"The rules file {path} names several rules {', '.join(map(repr, repeated))}: names match.")
    return rules


def _ids_by_name(listed: list[dict[str, Any]], *, names: set[str], project: str) -> dict[str, str]:
    """Id of the existing rule of each name in ``names``; two rules of one name leave no way to choose."""
    ids: dict[str, list[str]] = {}
    for rule in listed:
        if rule.get("name") in names:
            ids.setdefault(rule["name"], []).append(str(rule["id"]))
    for name, found in ids.items():
        if len(found) > 1:
            raise CommandError(
                f"{project} has {len(found)} rules named {name!r} (ids {', '.join(found)}): delete the extra ones in "
                "Sentry, then run this again."
            )
    return {name: found[0] for name, found in ids.items()}


def _token() -> str:
    # Read here, not in settings: an operator's credential for this one command; no process of the app needs it.
    token = os.environ.get("SENTRY_AUTH_TOKEN", "").strip()
    if not token:
        raise CommandError(
            "Set SENTRY_AUTH_TOKEN to a Sentry auth token with the alerts:write scope (Sentry: Settings > Auth "
            "Tokens); see docs/alerts.md#sentry-alert-rules."
        )
    return token


def _api_url() -> str:
    url = os.environ.get("SENTRY_API_URL", "").strip() or DEFAULT_API_URL
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise CommandError(f"SENTRY_API_URL={url!r} is not an http(s) address such as {DEFAULT_API_URL}.")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS:
        raise CommandError(
            f"SENTRY_API_URL={url!r}: refusing to send the token over plain http to another machine; use https."
        )
    return url
