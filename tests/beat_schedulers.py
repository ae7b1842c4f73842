"""Beat schedulers for tests (``celery beat -S tests.beat_schedulers:StallingScheduler``)."""

from __future__ import annotations

import os
import time
from typing import Any

from observability.beat.scheduler import ObservedScheduler


class StallingScheduler(ObservedScheduler):
    """The project's scheduler, wedged while the file named by ``BEAT_STALL_FILE`` exists: each tick blocks until
    it is removed, as a scheduler stuck on a lock or a hung database call would."""

    def tick(self, *args: Any, **kwargs: Any) -> Any:
        stall = os.environ.get("BEAT_STALL_FILE")
        while stall and os.path.exists(stall):
            time.sleep(0.05)  # the stall being simulated, in beat's own process
        return super().tick(*args, **kwargs)
