"""The ``marketplace`` Celery app, configured from Django settings (``CELERY_`` namespace).

Every task of the project runs through ``observability.tasks.ObservableTask``, the app's ``task_cls``;
workers refuse to start when a task could outlive the broker's visibility timeout.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

app = Celery("marketplace", task_cls="observability.tasks:ObservableTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.steps["worker"].add("observability.guards:VisibilityTimeoutGuard")

import observability.wiring  # noqa: E402, F401 - connects logging, Sentry and telemetry to Celery's signals
