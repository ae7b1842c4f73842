"""Sentry: one issue per final task failure (reported from its dead letter, never per retry), errors of the
web and beat processes, Sentry Crons check-ins around runs of beat entries, and the operator's tool that keeps
the project's issue alert rules. Off unless ``SENTRY_DSN``.

Owns: the per-process set-up and scrubbing (``setup``), final-failure reports (``reports``), check-ins
(``crons``), and the alert-rules API client and command (``alert_rules_api``, ``alert_rules_command``).
May import: ``observability.failure``, ``observability.logs``. Must not import the dead-letter store, the
message path or the base task: they call into it.
"""

from observability.sentry.crons import MONITORS, CheckInLimits, monitor_config, monitor_periodic_run
from observability.sentry.reports import report_dead_letter
from observability.sentry.setup import init_sentry

__all__ = ["MONITORS", "CheckInLimits", "init_sentry", "monitor_config", "monitor_periodic_run", "report_dead_letter"]
