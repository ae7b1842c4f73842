"""Django project and Celery app wiring; no business rules live here."""

from marketplace.celery import app as celery_app

__all__ = ["celery_app"]
