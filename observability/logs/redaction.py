"""Redaction: values of secret-like keys (``password``, ``token``, ``dsn``, ...) and of the PII keys of
``settings.LOG_REDACT_KEYS`` become ``"[redacted]"``, at any depth, without mutating what the caller passed;
credentials inside URLs (``redis://:pw@host``, a Sentry DSN's key) are masked wherever a string holds one.

Applied to every log line (``redact_event``, a structlog processor) and to Sentry events (``redact_mapping``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from structlog.typing import EventDict, WrappedLogger

__all__ = ["MASK", "REDACTED", "SECRET_KEY_PARTS", "mask_url_credentials", "redact_event", "redact_mapping"]

REDACTED = "[redacted]"
#: What stands for a URL's password (or its user, when the user is the secret: a Sentry DSN's public key).
#: Celery's own mask, so ``inspect conf`` reads the same for the settings Celery masks and the ones it misses.
MASK = "********"
# scheme://user:password@ or scheme://user@ - the user part of a URL without a password is a key (Sentry's
# DSN ``https://<key>@host/1``), so it is masked too; e-mail addresses have no ``://`` and are not touched.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*)(?::[^@/\s]*)?@")
#: A key containing one of these (case-insensitive, ``-`` read as ``_``) holds a secret: ``EMAIL_HOST_PASSWORD``,
#: ``x-api-token``, ``AWS_SECRET_ACCESS_KEY``.
SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "dsn",
    "cookie",
    "sessionid",
    "secret_key",
    "access_key",
)
# Values that hold no keys: the redaction walk stops at once (an exact type check, cheaper than isinstance).
_ATOMS = frozenset({str, int, float, bool, type(None)})
# Containers nested deeper than this are left as they are (and a self-referencing one does not loop).
_MAX_DEPTH = 16


class _Redactor:
    """Replaces the values of sensitive keys; remembers its verdict for each key it has seen."""

    def __init__(self, pii_keys: list[str]) -> None:
        self._pii = frozenset(_normalise(key) for key in pii_keys)
        self._verdicts: dict[str, bool] = {}

    def is_sensitive(self, key: str) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            normal = _normalise(key)
            verdict = normal in self._pii or any(part in normal for part in SECRET_KEY_PARTS)
            if len(self._verdicts) > 4096:  # keys are mostly a fixed vocabulary; bound the odd dynamic ones
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def redact_in_place(self, event_dict: EventDict) -> None:
        """Redact ``event_dict``'s own values; nested containers are copied only where something changes."""
        for key, value in event_dict.items():
            if self.is_sensitive(key):
                event_dict[key] = REDACTED
            elif type(value) is str:
                event_dict[key] = mask_url_credentials(value)
            elif type(value) not in _ATOMS:
                event_dict[key] = self.redacted(value, 1)

    def redacted(self, value: Any, depth: int) -> Any:
        """``value`` with sensitive entries replaced: ``value`` itself when nothing is, else a new container."""
        if type(value) is str:
            return mask_url_credentials(value)  # the same object when it holds no URL credentials
        if type(value) in _ATOMS or depth > _MAX_DEPTH:
            return value
        if isinstance(value, Mapping):
            copy: dict[Any, Any] | None = None
            for key, item in value.items():
                new = REDACTED if isinstance(key, str) and self.is_sensitive(key) else self.redacted(item, depth + 1)
                if new is not item:
                    if copy is None:
                        copy = dict(value)
                    copy[key] = new
            return value if copy is None else copy
        if isinstance(value, list | tuple):
            items: list[Any] | None = None
            for index, item in enumerate(value):
                new = self.redacted(item, depth + 1)
                if new is not item:
                    if items is None:
                        items = list(value)
                    items[index] = new
            if items is None:
                return value
            return tuple(items) if isinstance(value, tuple) else items
        return value


def mask_url_credentials(text: str) -> str:
    """``text`` with every URL's password (or bare user, a DSN's key) replaced by ``MASK``."""
    if "://" not in text or "@" not in text:  # the common case, without the regular expression
        return text
    return _URL_CREDENTIALS.sub(_masked_credentials, text)


def _masked_credentials(match: re.Match[str]) -> str:
    scheme, user = match["scheme"], match["user"]
    if match.group(0).count(":") > 1:  # user:password@ - the user name stays readable
        return f"{scheme}{user}:{MASK}@"
    return f"{scheme}{MASK}@"


def _normalise(key: str) -> str:
    return key.lower().replace("-", "_")


# The redactor follows settings.LOG_REDACT_KEYS (override_settings included): rebuilt when the list changes.
_redactor: tuple[object, _Redactor] | None = None


def _current_redactor() -> _Redactor:
    global _redactor
    keys = settings.LOG_REDACT_KEYS
    cached = _redactor
    if cached is None or cached[0] is not keys:
        cached = _redactor = (keys, _Redactor(list(keys)))
    return cached[1]


def redact_mapping(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``mapping`` with the values of secret-like and PII keys replaced by ``REDACTED``, at any depth.

    ``mapping`` and what it contains are left untouched; unchanged nested containers are shared, not copied.
    """
    copy = dict(mapping)
    _current_redactor().redact_in_place(copy)
    return copy


def redact_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    _current_redactor().redact_in_place(event_dict)
    return event_dict
