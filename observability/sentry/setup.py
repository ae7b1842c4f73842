"""Sentry's set-up per process: off unless ``SENTRY_DSN``; the Django and Celery integrations, no PII, no
frame variables, task arguments and ``LOG_REDACT_KEYS`` scrubbed from every part of every event, no tracing
(OpenTelemetry traces; events carry its trace id). Initialised once per process, again in each forked pool
child. The Celery integration's capture inside a task run is dropped (``before_send``): a retried run is not an
error, and a final failure is reported once, from its dead letter (``observability.sentry.reports``).
"""

from __future__ import annotations

import os
from functools import cache, partial
from typing import TYPE_CHECKING

import sentry_sdk
import structlog
from django.conf import settings
from sentry_sdk._types import SENSITIVE_DATA_SUBSTITUTE
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, DEFAULT_PII_DENYLIST
from sentry_sdk.utils import get_default_release

from observability.logs.redaction import mask_url_credentials

if TYPE_CHECKING:
    from sentry_sdk._types import DataCollectionUserOptions, Event, Hint

__all__ = ["SCRUBBED_KEYS", "init_sentry"]

log = structlog.get_logger("observability.sentry")

#: Keys whose values never leave the process, on top of the SDK's denylists and ``LOG_REDACT_KEYS``: task
#: arguments (Celery's ``celery-job`` extra, protocol headers) and raw broker messages.
SCRUBBED_KEYS = ("args", "kwargs", "argsrepr", "kwargsrepr", "raw_message")

# pid of the process Sentry was initialised in: a forked pool child inherits the flag, not a working client.
_initialised_in_pid: int | None = None


def init_sentry(*, role: str) -> None:
    """Turn Sentry on for this process when ``SENTRY_DSN`` is set; otherwise do nothing.

    Idempotent within a process; a forked child (another pid) builds its own client. ``role`` (web, worker,
    beat) becomes the ``role`` tag of every event.
    """
    global _initialised_in_pid
    if not settings.SENTRY_DSN or _initialised_in_pid == os.getpid():
        return
    denylist = frozenset(key.lower() for key in [*DEFAULT_DENYLIST, *DEFAULT_PII_DENYLIST, *SCRUBBED_KEYS,
                                                  *settings.LOG_REDACT_KEYS])  # fmt: skip
    sentry_sdk.init(
        dsn=settings.SENTRY_DSN,
        environment=settings.SENTRY_ENVIRONMENT,
        release=_release(),
        data_collection=_data_collection(),
        # Tracing is OpenTelemetry's; events carry its trace id.
        traces_sample_rate=None,
        # Only the integrations named here (plus the SDK's defaults: logging, atexit, threading...): the
        # auto-enabled ones would add Redis and HTTP spans and breadcrumbs nobody reads.
        auto_enabling_integrations=False,
        integrations=[DjangoIntegration()],
        # The Celery integration nowhere. In the worker it would capture task exceptions that are dropped
        # (final failures are reported from dead letters) at about a quarter of a task's CPU
        # (docs/performance.md); in a producer (web, beat) it wraps every publish to add Sentry trace headers
        # that no worker reads. Beat entries check in from the worker's run (monitor_periodic_run). In the
        # worker the logging integration only adds cost too.
        disabled_integrations=[CeleryIntegration(), LoggingIntegration()]
        if role == "worker"
        else [CeleryIntegration()],
        before_send=partial(_before_send, denylist=denylist),
    )
    sentry_sdk.get_global_scope().set_tag("role", role)
    _initialised_in_pid = os.getpid()
    log.info("sentry.enabled", role=role, environment=settings.SENTRY_ENVIRONMENT)


@cache
def _release() -> str | None:
    """The SDK's own default release (``SENTRY_RELEASE``, else the git commit, ...), found once per process tree:
    the worker's main process finds it before the pool forks, so a pool child does not run ``git rev-parse``
    again each time it starts (4 ms of its start-up)."""
    return get_default_release()


def _data_collection() -> DataCollectionUserOptions:
    """``send_default_pii=False`` as the SDK defines it, stated explicitly (sentry-sdk 2.75 deprecates that
    option for this one), without frame variables, and with ``LOG_REDACT_KEYS`` filtered from headers,
    cookies and query strings (and, by ``_before_send``, from request bodies)."""
    terms = ["forwarded", "-ip", "remote-", "via", "-user", *settings.LOG_REDACT_KEYS]
    return {
        "user_info": False,
        "cookies": {"mode": "denylist", "terms": terms},
        "http_headers": {"request": {"mode": "denylist", "terms": terms}},
        "url_query_params": {"mode": "denylist", "terms": terms},
        "http_bodies": ["incoming_request"],
        "graphql": {"document": False, "variables": False},
        "gen_ai": {"inputs": False, "outputs": False},
        "database_query_data": False,
        # Celery's task arguments (the integration's ``celery-job`` extra).
        "queues": False,
        # A task frame's locals are its arguments, whatever their names: no denylist can catch them.
        "stack_frame_variables": False,
    }


def _before_send(event: Event, hint: Hint, *, denylist: frozenset[str]) -> Event | None:
    exceptions = event.get("exception", {}).get("values", [])
    if any((value.get("mechanism") or {}).get("type") == "celery" for value in exceptions):
        # Captured by the Celery integration inside a run. Reported once, from the dead letter, if final.
        return None
    # An explicit data_collection turns the SDK's own event scrubber off; this one covers every part of the
    # event (request, extra, contexts, tags, breadcrumbs...) but the SDK's own metadata.
    for key, value in event.items():
        if key not in _UNSCRUBBED:
            _scrub(value, denylist)
    return event


_UNSCRUBBED = frozenset({"_meta", "sdk", "modules"})


def _scrub(value: object, denylist: frozenset[str]) -> None:
    # Strings are masked where they stand (an exception message or a breadcrumb naming a URL with its password).
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in denylist:
                value[key] = SENSITIVE_DATA_SUBSTITUTE
            elif isinstance(item, str):
                value[key] = mask_url_credentials(item)
            else:
                _scrub(item, denylist)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                value[index] = mask_url_credentials(item)
            else:
                _scrub(item, denylist)
