"""Flower's configuration, read by ``celery -A marketplace flower`` from the directory it starts in (Flower's
default ``--conf``): Flower shows task arguments and can revoke tasks and shut workers down, so it listens on
127.0.0.1 unless ``FLOWER_ADDRESS``/``--address`` says otherwise, and it refuses to start without
authentication (``FLOWER_BASIC_AUTH=user:password``, or ``FLOWER_AUTH`` with an OAuth provider).

Flower applies ``FLOWER_*`` variables, then this file, then the command line: the options the variables and the
command line set are known here; this file's own values must not override the variables'.
"""

from __future__ import annotations

import os
import sys

from tornado.options import options

address = os.environ.get("FLOWER_ADDRESS") or options.address or "127.0.0.1"

if not (options.basic_auth or options.auth):
    sys.exit(
        "flower: refusing to start without authentication: set FLOWER_BASIC_AUTH=user:password "
        "(or --basic-auth=user:password, or FLOWER_AUTH with an OAuth provider)"
    )
