"""Django app configuration for observability (base task, dead letters, logging)."""

from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from observability import logs as obs_logging

        obs_logging.configure_logging()
