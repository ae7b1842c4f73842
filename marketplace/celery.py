"""The ``marketplace`` Celery app, configured from Django settings (``CELERY_`` namespace).

Every task of the project runs through ``observability.tasks.ObservableTask``, the app's ``task_cls``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

app = Celery("marketplace", task_cls="observability.tasks:ObservableTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
