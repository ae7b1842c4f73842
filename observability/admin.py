"""Where Django's admin autodiscovery looks (``<app>.admin``): the dead-letter admin lives in
``observability.deadletters.admin``."""

from observability.deadletters import admin as deadletters_admin

__all__ = ["deadletters_admin"]
