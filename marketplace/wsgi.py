"""WSGI entry point for the web role (gunicorn marketplace.wsgi)."""

import django
from django.core.wsgi import get_wsgi_application

from marketplace.startup import configure

configure()  # reads .env and the settings, or stops in one line naming the variable
django.setup(set_prefix=False)

from observability.wiring import setup_web  # noqa: E402 - needs Django set up

setup_web()  # before the application: the Django instrumentation adds its middleware
application = get_wsgi_application()
