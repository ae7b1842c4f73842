"""Logging, telemetry (OpenTelemetry) and Sentry settings, read by the ``observability`` package."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from marketplace.env import env_bool, env_float, env_int, env_list, env_str
from marketplace.settings.django_core import DEBUG

# --- Logging ------------------------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} must be DEBUG, INFO, WARNING, ERROR or CRITICAL.")
# auto: JSON lines when stderr is not a terminal, readable lines on a terminal.
LOG_FORMAT = env_str("LOG_FORMAT", "auto")
if LOG_FORMAT not in {"auto", "json", "console"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be auto, json or console.")
# Celery's own per-task "received"/"succeeded" INFO lines (each run already logs one `task.finished` line).
LOG_TASK_LIFECYCLE_LINES = env_bool("LOG_TASK_LIFECYCLE_LINES", False)
# Keys whose values never reach a log line or a Sentry event (secrets are always redacted too).
LOG_REDACT_KEYS = env_list("LOG_REDACT_KEYS", ["email", "recipient", "phone", "address"])
# observability.logs configures stdlib logging and structlog together, for Django and Celery alike.
LOGGING_CONFIG = None

# --- Telemetry ----------------------------------------------------------------------------------------------
# OpenTelemetry is configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT turns export on;
# OTEL_SERVICE_NAME overrides marketplace-<role>). Without an endpoint, no provider is installed: zero cost.
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT", "")
OTEL_METRIC_EXPORT_INTERVAL_MILLIS = env_int("OTEL_METRIC_EXPORT_INTERVAL", 15_000, minimum=100)
# Longest a process's exit (a recycled worker child's included) waits for its last spans and metrics to be
# exported; what the collector has not taken by then is lost, and logged. An unreachable collector otherwise
# held each exiting child for ~20 s (the exporters' retries), a child the pool could not replace meanwhile.
TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS = env_float("TELEMETRY_SHUTDOWN_TIMEOUT", 2.0, minimum=0.0)
# Gauges the worker's main process measures (once per worker, not in every child).
TELEMETRY_GAUGES = [
    "observability.messaging.gauges.register",
    "observability.deadletters.gauges.register",
    "observability.beat.register_gauges",
    "promotions.metrics.register_gauges",
]

# --- Sentry -------------------------------------------------------------------------------------------------
SENTRY_DSN = env_str("SENTRY_DSN", "")
SENTRY_ENVIRONMENT = env_str("SENTRY_ENVIRONMENT", "development" if DEBUG else "production")
