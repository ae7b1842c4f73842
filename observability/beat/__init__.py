"""Beat: its entries' health and its own telemetry.

Owns: the last successful run of each entry and the gauges the worker's main process exports from it
(``gauges``), and the scheduler beat runs (``scheduler``): a span per entry it sends, parent of the publish's
PRODUCER span, and a count of its sends by outcome. Beat's liveness probe is Celery's own remote control
(``CELERY_BEAT_ENABLE_REMOTE_CONTROL``: ``celery inspect ping -d celerybeat@HOST`` goes unanswered once the
scheduler has not ticked for ``CELERY_BEAT_REMOTE_CONTROL_MAX_TICK_AGE_SECONDS``).

May import: ``observability.telemetry``, ``observability.logs`` (masking) and ``observability.redis_client``.
"""

from observability.beat.gauges import BEAT_LAST_SUCCESS_KEY, record_beat_success, register_gauges

__all__ = ["BEAT_LAST_SUCCESS_KEY", "record_beat_success", "register_gauges"]
