"""Typed, strict readers for environment variables.

Every setting that comes from the environment goes through one of these functions, so a missing or
malformed variable stops the process at start with one line that names it (``ImproperlyConfigured``).
"""

from __future__ import annotations

import math
import os
import re
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

__all__ = ["env_bool", "env_float", "env_int", "env_list", "env_str", "env_url", "mask_password"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_UNSET = object()


def _raw(name: str, default: object) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is _UNSET:
            raise ImproperlyConfigured(
                f"Set the {name} environment variable, in the environment or in .env "
                "(see .env.example; the first 'make run' writes a .env for development)."
            )
        return None
    return value


def env_str(name: str, default: str | object = _UNSET) -> str:
    """Return ``name`` as a string; without a default, the variable is required."""
    value = _raw(name, default)
    return str(default) if value is None else value


def env_bool(name: str, default: bool) -> bool:
    """Return ``name`` as a boolean; accepts 1/0, true/false, yes/no, on/off (any case)."""
    value = _raw(name, default)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use true or false (also 1/0, yes/no, on/off).")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """Return ``name`` as an integer, optionally no smaller than ``minimum``."""
    value = _raw(name, default)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not an integer: use a whole number{_at_least(minimum)}."
        ) from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below its minimum of {minimum}.")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    """Return ``name`` as a float, optionally no smaller than ``minimum``."""
    value = _raw(name, default)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a number: use one such as 2 or 0.5{_at_least(minimum)}."
        ) from None
    if not math.isfinite(number):
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a finite number: use one such as 2 or 0.5{_at_least(minimum)}."
        )
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below its minimum of {minimum}.")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """Return ``name`` as a comma-separated list with blanks dropped."""
    value = _raw(name, default)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(
    name: str,
    default: str | object = _UNSET,
    *,
    schemes: tuple[str, ...],
    kind: str,
    form: str,
    path_pattern: str = ".*",
) -> str:
    """Return ``name`` as a URL whose scheme is one of ``schemes``, that names a host, has a numeric port if
    any and a path (without its ``/``) matching ``path_pattern``.

    The error names the variable, its value with any password masked, ``kind`` ("a database URL") and the
    accepted ``form`` ("postgres://USER[:PASSWORD]@HOST:PORT/NAME").
    """
    value = env_str(name, default)
    parsed = urlparse(value)
    try:
        parsed.port  # noqa: B018 - raises ValueError on a port that is not a number in range
        valid_port = True
    except ValueError:
        valid_port = False
    if (
        parsed.scheme not in schemes
        or not (parsed.hostname or parsed.path)
        or not valid_port
        or re.fullmatch(path_pattern, parsed.path.removeprefix("/")) is None
    ):
        raise ImproperlyConfigured(f"{name}={mask_password(value)!r} is not {kind}: use {form}")
    return value


def mask_password(url: str) -> str:
    """``url`` with the password of its user information (``user:PASSWORD@``) replaced by ``***``.

    Works on text that is not a valid URL too (a value being rejected): whatever sits between the first
    ``:`` of the user information and the last ``@`` is masked.
    """
    if "@" not in url:
        return url
    credentials, host = url.rsplit("@", 1)
    scheme, separator, userinfo = credentials.rpartition("://")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}{separator}{user}{colon and ':***'}@{host}"


def _at_least(minimum: float | None) -> str:
    return "" if minimum is None else f" of at least {minimum}"
