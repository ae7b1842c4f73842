"""Typed, strict readers for environment variables.

Every setting that comes from the environment goes through one of these functions, so a missing or
malformed variable stops the process at start with one line that names it (``ImproperlyConfigured``).
"""

from __future__ import annotations

import math
import os
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

__all__ = ["env_bool", "env_float", "env_int", "env_list", "env_str", "env_url"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_UNSET = object()


def _raw(name: str, default: object) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is _UNSET:
            raise ImproperlyConfigured(f"Set the {name} environment variable (see .env.example).")
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
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use true or false.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """Return ``name`` as an integer, optionally no smaller than ``minimum``."""
    value = _raw(name, default)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
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
        raise ImproperlyConfigured(f"{name}={value!r} is not a number.") from None
    if not math.isfinite(number):
        raise ImproperlyConfigured(f"{name}={value!r} is not a finite number.")
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below its minimum of {minimum}.")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """Return ``name`` as a comma-separated list with blanks dropped."""
    value = _raw(name, default)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(name: str, default: str | object = _UNSET, *, schemes: tuple[str, ...]) -> str:
    """Return ``name`` as a URL whose scheme is one of ``schemes`` and that names a host."""
    value = env_str(name, default)
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not (parsed.hostname or parsed.path):
        allowed = ", ".join(f"{scheme}://" for scheme in schemes)
        raise ImproperlyConfigured(f"{name} must be a URL starting with {allowed} (got scheme {parsed.scheme!r}).")
    return value
