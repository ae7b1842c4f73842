"""Django app configuration for the promotions domain."""

from django.apps import AppConfig


class PromotionsConfig(AppConfig):
    name = "promotions"
    verbose_name = "Flash promotions"

    def ready(self) -> None:
        # Registers the API's OpenAPI descriptions with drf-spectacular (extensions register when defined).
        from promotions.api import schema  # noqa: F401
