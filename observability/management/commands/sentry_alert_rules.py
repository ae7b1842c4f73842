"""``manage.py sentry_alert_rules``: Django finds commands here; the command lives with Sentry
(``observability.sentry.alert_rules_command``)."""

from observability.sentry.alert_rules_command import Command

__all__ = ["Command"]
