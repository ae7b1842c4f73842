"""A client for the part of Sentry's API that manages a project's issue alert rules: list (every page), create,
update. Every failure becomes a ``CommandError`` that says what to check; messages never carry the token,
and redirects are reported, not followed (urllib would send the Authorization header to the new address).

API: https://docs.sentry.io/api/alerts/ (list, create and update issue alert rules).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from email.message import Message
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from django.core.management.base import CommandError

__all__ = ["DEFAULT_API_URL", "LOCAL_HOSTS", "SentryApi"]

DEFAULT_API_URL = "https://sentry.io"
#: Seconds before an unanswered request gives up.
TIMEOUT_SECONDS = 30
#: Plain http sends the token in clear: only to this machine (a local Sentry, the tests' fake one).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
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
        if urlsplit(base_url).hostname in LOCAL_HOSTS:
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
