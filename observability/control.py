"""The worker's remote-control ``conf`` reply (``celery inspect conf``, Flower's worker Config tab) with every
secret masked: Celery masks settings by name, but a Django project's reply is all of ``settings``, where
``CELERY_BROKER_URL`` (not ``broker_url``) and ``SENTRY_DSN`` match none of its names and came out in clear.
"""

from __future__ import annotations

from typing import Any

from celery.utils.serialization import strtobool
from celery.worker import control as celery_control
from celery.worker.control import inspect_command

from observability.logs.redaction import MASK, mask_url_credentials

__all__ = ["masked_conf"]

#: Celery's own command, kept before ours takes its name: its reply is masked, not rebuilt.
_celery_conf = celery_control.conf  # type: ignore[attr-defined]


def masked_conf(value: Any, key: str = "") -> Any:
    """A JSON-like ``value`` with URL credentials masked at any depth and DSN-named settings replaced whole."""
    if isinstance(value, str):
        return MASK if value and "DSN" in key.upper() else mask_url_credentials(value)
    if isinstance(value, dict):
        return {k: masked_conf(item, str(k)) for k, item in value.items()}
    if isinstance(value, list | tuple):
        return [masked_conf(item, key) for item in value]
    return value


# Registered under Celery's own name, alias and signature (Celery 5.7's), so it replaces Celery's ``conf`` in
# every worker that imports this module; tests/observability/test_control.py pins that registry.
@inspect_command(
    name="conf",
    alias="dump_conf",
    signature="[include_defaults=False]",
    args=[("with_defaults", strtobool)],
)
def conf(state: Any, with_defaults: bool = False, **kwargs: Any) -> Any:
    """List configuration (secrets masked)."""
    return masked_conf(_celery_conf(state, with_defaults=with_defaults, **kwargs))
