"""``manage.py sentry_alert_rules``: create or update the project's Sentry issue alert rules, kept as data in
``dashboards/sentry/alert-rules.json``, through Sentry's API; rules are matched by name, so a rerun duplicates none.

    sentry_alert_rules apply --org ORG --project PROJECT [--environment ENV] [--rules PATH] [--dry-run]

An operator's tool, not the app's configuration: its credential is read from the environment when it runs -
``SENTRY_AUTH_TOKEN`` (scope ``alerts:write``) and ``SENTRY_API_URL`` (default https://sentry.io) - and the
token is never printed. API: https://docs.sentry.io/api/alerts/ (list, create and update issue alert rules).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from email.message import Message
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

DEFAULT_API_URL = "https://sentry.io"
#: Seconds before an unanswered request gives up.
TIMEOUT_SECONDS = 30
#: Plain http sends the token in clear: only to this machine (a local Sentry, the tests' fake one).
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: Sentry pages lists with a Link header: ``<url>; rel="next"; results="true"; cursor="0:100:0"``.
_NEXT_PAGE = re.compile(r'rel="next";\s*results="true";\s*cursor="(?P<cursor>[^"]+)"')
#: Characters of an error body quoted in a message: enough for Sentry's field errors.
_DETAIL_CHARS = 500


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is reported, not followed: urllib would send the Authorization header to the new address."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> None:
        return None


class SentryApi:
    """The calls of Sentry's issue alert rules API this command makes, each failure turned into a
    ``CommandError`` that says what to check. Messages never carry the token."""

    def __init__(self, *, base_url: str, token: str, org: str, project: str) -> None:
        self.project = f"{org}/{project}"
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._rules_url = f"{self._base_url}/api/0/projects/{quote(org, safe='')}/{quote(project, safe='')}/rules/"
        handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
        if urlsplit(base_url).hostname in _LOCAL_HOSTS:
            handlers.append(urllib.request.ProxyHandler({}))  # an http(s)_proxy variable never covers this machine
        self._opener = urllib.request.build_opener(*handlers)

    def list_rules(self) -> list[dict[str, Any]]:
        """Every issue alert rule of the project, all pages."""
        rules: list[dict[str, Any]] = []
        query = ""
        while True:
            doing = f"list the alert rules of {self.project}"
            page, headers = self._call("GET", self._rules_url + query, doing=doing)
            if not isinstance(page, list):
                raise CommandError(f"Sentry answered the request to {doing} with something other than a list.")
            rules.extend(page)
            next_page = _NEXT_PAGE.search(headers.get("Link", ""))
            if next_page is None:
                return rules
            query = "?" + urlencode({"cursor": next_page["cursor"]})

    def create_rule(self, rule: dict[str, Any]) -> dict[str, Any]:
        created, _ = self._call("POST", self._rules_url, rule, doing=f"create rule {rule['name']!r}")
        return dict(created)

    def update_rule(self, rule_id: str, rule: dict[str, Any]) -> None:
        url = f"{self._rules_url}{quote(rule_id, safe='')}/"
        self._call("PUT", url, rule, doing=f"update rule {rule['name']!r} (id {rule_id})")

    def _call(self, method: str, url: str, body: object = None, *, doing: str) -> tuple[Any, Message]:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        # S310: every URL starts with the SENTRY_API_URL that _api_url checked is http(s).
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with self._opener.open(request, timeout=TIMEOUT_SECONDS) as response:
                payload = response.read()
                answer_headers: Message = response.headers
        except urllib.error.HTTPError as error:
            raise CommandError(self._redact(self._refusal(error, method, doing))) from None
        except (urllib.error.URLError, OSError) as error:  # refused, unknown host, TLS, timeout
            reason = getattr(error, "reason", None) or error
            raise CommandError(
                self._redact(
                    f"Cannot reach Sentry at {self._base_url} ({reason}): check SENTRY_API_URL and the network."
                )
            ) from None
        try:
            return json.loads(payload), answer_headers
        except ValueError:
            raise CommandError(
                f"Sentry at {self._base_url} answered the request to {doing} with something other than JSON: "
                "check that SENTRY_API_URL is the address of Sentry itself."
            ) from None

    def _refusal(self, error: urllib.error.HTTPError, method: str, doing: str) -> str:
        detail = " ".join(error.read().decode(errors="replace").split())[:_DETAIL_CHARS]
        status = f"HTTP {error.code}"
        if 300 <= error.code < 400:
            return (
                f"Sentry answered the request to {doing} with a redirect ({status}) to "
                f"{error.headers.get('Location')}: set SENTRY_API_URL to that server (the organization's region, such "
                "as https://de.sentry.io)."
            )
        if error.code == 401:
            return f"Sentry rejected the token ({status}) when asked to {doing}: check SENTRY_AUTH_TOKEN. {detail}"
        if error.code == 403:
            return (
                f"The token may not {doing} ({status}): it needs the alerts:write scope and access to {self.project}."
            )
        if error.code == 404 and method == "PUT":
            return f"Sentry could not {doing} ({status}): it was deleted meanwhile; run this again to create it."
        if error.code == 404:
            return (
                f"Sentry has no project {self.project} ({status}): check --org and --project (slugs) and "
                f"SENTRY_API_URL ({self._base_url})."
            )
        if error.code < 500:
            return f"Sentry refused to {doing} ({status}): {detail}"
        return (
            f"Sentry failed to {doing} ({status}); try again later: rules already applied stay, and a rerun "
            f"updates them. {detail}"
        )

    def _redact(self, message: str) -> str:
        # The token is never put in a message; this covers a server that echoes it back.
        return message.replace(self._token, "[SENTRY_AUTH_TOKEN]").strip()


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
    if parts.scheme == "http" and parts.hostname not in _LOCAL_HOSTS:
        raise CommandError(
            f"SENTRY_API_URL={url!r}: refusing to send the token over plain http to another machine; use https."
        )
    return url
