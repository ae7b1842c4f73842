"""structlog configuration: events with key/value context, rendered through stdlib logging.

Tasks and services log events (``log.info("promo.activated", promo_id=...)``); the handlers and formats
come from stdlib logging (Celery's worker formats in the worker, Django's ``LOGGING`` elsewhere).
"""

from __future__ import annotations

import structlog

__all__ = ["configure_structlog"]


def configure_structlog() -> None:
    """Route structlog through stdlib logging, with context variables merged into every event."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
