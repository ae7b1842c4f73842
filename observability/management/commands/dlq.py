"""``manage.py dlq``: Django finds commands here; the command lives with the dead-letter store
(``observability.deadletters.command``)."""

from observability.deadletters.command import Command

__all__ = ["Command"]
