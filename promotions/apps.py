"""Django app configuration for the promotions domain."""

from django.apps import AppConfig


class PromotionsConfig(AppConfig):
    name = "promotions"
    verbose_name = "Flash promotions"
