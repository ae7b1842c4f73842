"""WSGI entry point for the web role (gunicorn marketplace.wsgi)."""

import os

import django
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
django.setup(set_prefix=False)

from observability.wiring import setup_web  # noqa: E402 - needs Django set up

setup_web()  # before the application: the Django instrumentation adds its middleware
application = get_wsgi_application()
