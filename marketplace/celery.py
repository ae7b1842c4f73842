"""The ``marketplace`` Celery app, configured from Django settings (``CELERY_`` namespace).

Every task of the project runs through ``observability.task.ObservableTask``, the app's ``task_cls``, and every
publish through ``observability.publishing.ObservableCelery``, the app's class (a PRODUCER span each); workers
refuse to start when their broker could deliver a message twice (a time limit past Redis's visibility timeout or
RabbitMQ's consumer timeout).
"""

from marketplace.startup import configure

# The `celery` command's entry point: reads .env and loads the settings, or stops in one line.
configure()

from observability.publishing import ObservableCelery  # noqa: E402 - once the settings are loaded

app = ObservableCelery("marketplace", task_cls="observability.task:ObservableTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The dead-letter store's tasks live in its own package, not in the app's ``observability.tasks``.
app.autodiscover_tasks(["observability.deadletters"])
app.steps["worker"].add("observability.messaging.guards:BrokerGuard")

import observability.wiring  # noqa: E402, F401 - connects logging, Sentry and telemetry to Celery's signals
