"""Logs: structlog events and stdlib records (Django, Celery, kombu) through one processor chain and one
handler; JSON off a terminal, Celery's line shape on one; task and trace context on every line; secrets and
PII redacted.

Owns: the set-up (``setup``), the line formats (``renderers``) and redaction (``redaction``, which Sentry uses
too). Imports nothing from the rest of ``observability``: every other room may log.
"""

from observability.logs.redaction import REDACTED, redact_mapping
from observability.logs.setup import bind_task_context, clear_task_context, configure_logging

__all__ = ["REDACTED", "bind_task_context", "clear_task_context", "configure_logging", "redact_mapping"]
