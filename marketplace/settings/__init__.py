"""Django and Celery settings, read once from the environment.

One module per responsibility, imported below in the order their dependencies need: a section imports by
name what it reads from an earlier one (``DEBUG``, ``INSTALLED_APPS``, the broker URL). Every variable is
documented in ``.env.example``. A missing or malformed one stops the process at start
with one line naming it (see ``marketplace.env``). Production secrets have no default.
"""

# Star imports: Django reads the settings as this module's upper-case globals, so each section's names must
# be bound here. The sections themselves import what they need by name. The order is the dependency order
# (a section imports from earlier ones) and INSTALLED_APPS' order: isort must not sort it.
# isort: off
from marketplace.settings.django_core import *  # noqa: F403
from marketplace.settings.broker import *  # noqa: F403
from marketplace.settings.api import *  # noqa: F403
from marketplace.settings.domain import *  # noqa: F403
from marketplace.settings.observability import *  # noqa: F403
# isort: on
