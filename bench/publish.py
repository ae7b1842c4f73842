"""Producer process of the task benchmarks: ``python -m bench.publish`` prints one JSON object.

Run as a subprocess so bare and instrumented producers start equal: the instrumented one sets up telemetry
(``observability.telemetry.setup("bench")``, OTLP endpoint in its environment) and Sentry as the web has it, so
each publish is a producer span, timed and counted, whose context ``before_task_publish`` injects; the bare one
disconnects the project's publish hook and publishes through Celery's own ``send_task`` (not
``ObservableCelery``'s), and the contrib one does too, then runs under the contrib instrumentation
(``bench.contrib``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from types import MethodType

from bench.harness import setup_django


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=["bare", "observable", "contrib"], required=True)
    parser.add_argument("--count", type=int, required=True, help="Messages to publish.")
    parser.add_argument("--rate", type=float, default=0.0, help="Messages per second (0: as fast as possible).")
    parser.add_argument("--stamp", action="store_true", help="Pass the publish time as the task's argument.")
    parser.add_argument(
        "--countdown-spread", type=float, default=0.0,
        help="Give each message a countdown drawn from 1 s to this many seconds, and pass its due time (the "
        "publish time plus the countdown) as the task's argument, so that the task records its lateness.",
    )  # fmt: skip
    args = parser.parse_args(argv)

    setup_django()
    from celery import Celery, signals

    from bench import contrib
    from bench.tasks import bare_noop, observable_noop
    from marketplace.celery import app
    from observability import sentry, telemetry, wiring

    if args.variant in ("bare", "contrib"):
        signals.before_task_publish.disconnect(wiring._before_publish)
        app.send_task = MethodType(Celery.send_task, app)  # type: ignore[method-assign]
        task = bare_noop
        if args.variant == "contrib":
            contrib.instrument()
    else:
        sentry.init_sentry(role="bench")  # as the web and beat have it, before their telemetry
        telemetry.setup("bench")
        task = observable_noop
    task.delay()  # opens the broker connection and warms the producer up; the drain step counts it
    started, cpu_started = time.perf_counter(), time.process_time()
    interval = 1 / args.rate if args.rate else 0.0
    draw = random.Random(7).uniform  # the same countdowns for every variant and repeat
    for index in range(args.count):
        if interval:
            due = started + index * interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        if args.countdown_spread:
            countdown = draw(1.0, args.countdown_spread)  # under 1 s bare Celery refuses on RabbitMQ
            task.apply_async((time.time() + countdown,), countdown=countdown)
        elif args.stamp:
            task.delay(time.time())
        else:
            task.delay()
    elapsed = time.perf_counter() - started
    # The whole process's CPU (the export thread's included), which CPU stolen by the hypervisor or other work on
    # the machine does not inflate as it does the wall-clock rate.
    cpu = time.process_time() - cpu_started
    telemetry.shutdown()
    figures = {"count": args.count, "seconds": elapsed, "per_second": args.count / elapsed}
    json.dump({**figures, "cpu_seconds": cpu, "per_cpu_second": args.count / cpu}, sys.stdout)


if __name__ == "__main__":
    main()
