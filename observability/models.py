"""The app's models, where Django looks for them (``<app>.models``): the dead-letter store's, defined in
``observability.deadletters.models``. The app label stays ``observability`` (tables, migrations, permissions)."""

from observability.deadletters.models import DeadLetter, DeadLetterReason, DeadLetterReplay, DeadLetterStatus

__all__ = ["DeadLetter", "DeadLetterReason", "DeadLetterReplay", "DeadLetterStatus"]
