"""The three dashboards as tables of panels. The per-task dashboard is the overview's Celery panels for one
task (``celery_rows(one_task=True)``): the same queries narrowed by ``$task``, broken down by outcome, queue or
error type where the overview breaks down by task.
"""

from __future__ import annotations

from dashboards import promql as q
from dashboards import slo
from dashboards.spec import (
    Board,
    Panel,
    Row,
    Target,
    Variable,
    above,
    below,
)

__all__ = ["BOARDS", "CELERY_OVERVIEW", "CELERY_TASK", "PROMOTIONS"]

CELERY = q.Scope(("queue", "task"))
DOMAIN = q.Scope()
FAILED = 'outcome=~"{}"'.format("|".join(q.FAILURE_OUTCOMES))
RETRIED = 'outcome="retried"'
#: Seconds since a worker's last heartbeat under which it is up: three 15 s export intervals, as CeleryNoWorkerUp.
HEARTBEAT_FRESH_SECONDS = 45
#: A task that never raised has no error series: an honest 0, named so in the legend ("none (no errors)").
NO_ERRORS = 'label_replace(label_replace(vector(0), "error_type", "none", "", ""), "outcome", "no errors", "", "")'
#: Outcomes keep one colour everywhere: green done, yellow will run again, red needs a human.
OUTCOME_COLORS = (
    ("succeeded", "green"),
    ("retried", "yellow"),
    ("skipped", "blue"),
    ("dead_lettered", "red"),
    ("failed", "dark-red"),
    ("rejected", "purple"),
    # Acknowledged unrun (an expired beat tick's retry, a revoke): nothing to do, but visible.
    ("expired", "text"),
    ("revoked", "text"),
)
# Thresholds, with the reason for each number. Where an alert watches the same thing (dashboards/alerts/), red
# starts at the alert's threshold, so a red panel and a firing alert tell the same story.
#: Failure ratio: red at CeleryTaskFailureRatioHigh's 10 %; orange from 1 %, a dependency or deploy going bad.
FAILURE_RATIO = above(0.01, 0.1)
#: Run duration: the base task's soft time limit is 240 s; red at 75 % of it, before runs are cut.
DURATION = above(60, 180)
#: Queue wait: red at CeleryQueueWaitHigh's 5 s objective; measured p95 is 11 ms (docs/performance.md).
QUEUE_WAIT = above(1, 5)
#: Backlog: red at CeleryQueueBacklogGrowing's 1,000 messages (a worker drains that in seconds).
BACKLOG = above(100, 1000)
#: Backlog growth in messages per minute, fitted over 10 minutes.
BACKLOG_GROWTH = above(10, 60)
#: Oldest waiting message: red at CeleryQueueStalled's 5 minutes (past the 300 s hard time limit); orange at
#: a minute, far beyond the 5 s queue-wait objective.
OLDEST_MESSAGE = above(60, 300)
#: Since a worker's last message: red at CeleryWorkerNotConsuming's 2 minutes (alerting only with work waiting).
SINCE_RECEIVED = above(60, 120)
#: Any pending dead letter waits for a human (DeadLettersPending).
DEAD_LETTERS = above(None, 1)
#: Oldest pending dead letter: red at DeadLetterOldestPendingTooOld's 3 days, orange after one.
DEAD_LETTER_AGE = above(86400, 3 * 86400)
#: Activation lag: red at the SLO, p99 <= 1 s (PromoActivationLagHigh); measured p99 is 5 ms.
ACTIVATION_LAG = above(0.5, 1)
#: Beat: intervals since the last success; red at CeleryBeatEntryMissed's 3.
BEAT_MISSED = above(2, 3)


def _finished(*matchers: str, by: tuple[str, ...] = ()) -> str:
    return q.rate_sum(CELERY, q.TASKS_FINISHED, *matchers, by=by)


def _zero_if_absent(expr: str, by: tuple[str, ...]) -> str:
    """``expr`` per ``by`` group, 0 for each group that ran tasks but has no such series (never happened)."""
    return f"{expr} or 0 * {_finished(by=by)}"


def _quantiles(scope: q.Scope, metric: q.Metric, *, exemplar: bool) -> tuple[Target, ...]:
    return tuple(Target(q.quantile(p, scope, metric), f"p{round(p * 100)}", exemplar) for p in (0.5, 0.95, 0.99))


def _stats(*, one_task: bool) -> tuple[Panel, ...]:
    workers_up = (
        f"sum by (queue) (time() - {CELERY.select(q.WORKER_HEARTBEAT)} < bool {HEARTBEAT_FRESH_SECONDS})"
        # A queue whose workers are all gone (series expired) still shows 0: producers know it.
        f" or 0 * sum by (queue) ({CELERY.select(q.TASKS_PUBLISHED)})"
    )
    return (
        Panel(
            "Throughput",
            "stat",
            (Target(_finished(), "finished"),),
            "ops",
            "Task runs finished per second, every outcome, summed over workers.",
            no_threshold="volume follows the workload; the failure ratio and the backlog say whether it copes.",
            width=4,
            height=4,
        ),
        Panel(
            "Failure ratio",
            "stat",
            (Target(q.ratio(_finished(FAILED), _finished(), idle_is_zero=True), "failure ratio"),),
            "percentunit",
            "Share of runs that ended dead-lettered, failed (worker lost mid-run) or rejected (never ran).",
            FAILURE_RATIO,
            red="runs are failing for good. Open *Errors by type* on the per-task dashboard, then the dead "
            "letters (`manage.py dlq list --since 1h`) and a failing run's trace.",
            alert="CeleryTaskFailureRatioHigh",
            width=4,
            height=4,
        ),
        Panel(
            "Workers up",
            "stat",
            (Target(workers_up, "{{queue}}"),),
            "short",
            f"Worker processes consuming each queue whose heartbeat is younger than {HEARTBEAT_FRESH_SECONDS} s.",
            below(1),
            red="no worker consumes the queue: its messages wait. Start a worker (`celery -A marketplace worker "
            "-Q <queue>`) or look at why it died (its logs, OOM kills).",
            alert="CeleryNoWorkerUp",
            width=4,
            height=4,
        ),
        Panel(
            "Backlog",
            "stat",
            (Target(q.gauge(CELERY, q.QUEUE_BACKLOG, by=("queue",)), "{{queue}}"),),
            "short",
            "Messages waiting in Redis per queue, all priorities together.",
            BACKLOG,
            red="work arrives faster than workers take it. Check *Workers up* and *Run duration*; add "
            "workers (`--concurrency`) or look for stuck runs (`celery -A marketplace inspect active`).",
            alert="CeleryQueueBacklogGrowing",
            width=4,
            height=4,
        ),
        Panel(
            "Dead letters pending",
            "stat",
            (Target(f"{q.gauge(CELERY, q.DEAD_LETTERS_PENDING)} or vector(0)", "pending"),),
            "short",
            "Dead letters waiting for a decision (replay or discard)"
            + (" for this task." if one_task else ", every reason (dead letters carry no queue label)."),
            DEAD_LETTERS,
            red="tasks failed for good and wait for a human. Triage with `manage.py dlq list` and `dlq show ID`, "
            "fix the cause, then `dlq replay` or discard (docs/dead-letters.md).",
            alert="DeadLettersPending",
            width=4,
            height=4,
        ),
        Panel(
            "Run duration p99",
            "stat",
            (Target(q.quantile(0.99, CELERY, q.TASK_DURATION), "p99"),),
            "s",
            "99th percentile of this task's run time, every outcome.",
            DURATION,
            red="runs approach the 240 s soft time limit and will be cut. Open a slow run's trace from an "
            "exemplar on *Run duration*.",
            width=4,
            height=4,
        )
        if one_task
        else Panel(
            "Oldest pending dead letter",
            "stat",
            (Target(f"max({q.DEAD_LETTERS_OLDEST_PENDING_AGE.name})", "age"),),
            "s",
            "Age of the oldest pending dead letter across all tasks (0 when there is none).",
            DEAD_LETTER_AGE,
            red="a failure has waited 3 days without a decision; retention deletes it 30 days after its last "
            "failure. Replay it once the cause is fixed (`manage.py dlq replay ID`), or discard it.",
            alert="DeadLetterOldestPendingTooOld",
            width=4,
            height=4,
        ),
    )


def _outcomes(*, one_task: bool) -> tuple[Panel, ...]:
    split: tuple[str, ...] = () if one_task else ("task",)
    by_task = "" if one_task else " by task"
    panels = (
        Panel(
            "Throughput by outcome",
            "timeseries",
            (Target(_finished(by=("outcome",)), "{{outcome}}"),),
            "ops",
            "Task runs finished per second, stacked by outcome: succeeded, retried (a retry was published), "
            "skipped (a singleton found another run), dead_lettered, failed (worker lost) and rejected.",
            no_threshold="volume follows the workload; red and purple areas are read on *Failure ratio*.",
            stacked=True,
            colors=OUTCOME_COLORS,
        ),
        Panel(
            "Failure ratio" + (by_task or " over time"),
            "timeseries",
            (Target(q.ratio(_finished(FAILED, by=split), _finished(by=split)), "{{task}}" if split else "failed"),),
            "percentunit",
            f"Share of runs{by_task} that ended dead-lettered, failed or rejected.",
            FAILURE_RATIO,
            red="this task fails for good. See its *Errors by type*, then its dead letters "
            "(`manage.py dlq list --task NAME`) and a failing run's trace.",
            alert="CeleryTaskFailureRatioHigh",
            task_links=bool(split),
            min=0,
        ),
        Panel(
            f"Retries{by_task}",
            "timeseries",
            (Target(_zero_if_absent(_finished(RETRIED, by=split), split), "{{task}}" if split else "retried"),),
            "ops",
            f"Runs{by_task} per second that hit a transient error and published a retry with backoff.",
            no_threshold="retrying is the policy working; a task that keeps retrying shows up as "
            "`max_retries_exceeded` dead letters on *Failure ratio*. Compare with its throughput.",
            task_links=bool(split),
        ),
    )
    if one_task:
        errors = q.rate_sum(CELERY, q.TASKS_FINISHED, 'error_type!=""', by=("error_type", "outcome"))
        return (
            *panels,
            Panel(
                "Errors by type",
                "timeseries",
                (Target(f"{errors} or {NO_ERRORS}", "{{error_type}} ({{outcome}})"),),
                "ops",
                "Runs per second that raised, by exception class and what became of them (retried, "
                "dead_lettered, failed, rejected). The error taxonomy (`observability/errors.py`) decides which "
                "are retried.",
                no_threshold="a retried transient error is expected; *Failure ratio* carries the red.",
            ),
        )
    return (
        *panels,
        Panel(
            "Throughput by task",
            "timeseries",
            (Target(_finished(by=("task",)), "{{task}}"),),
            "ops",
            "Task runs finished per second, per task. Click a series for its per-task dashboard.",
            no_threshold="volume follows the workload.",
            task_links=True,
        ),
    )


def _latency(*, one_task: bool) -> tuple[Panel, ...]:
    duration_split = "outcome" if one_task else "task"
    wait_split = "queue" if one_task else "task"
    return (
        Panel(
            "Run duration",
            "timeseries",
            _quantiles(CELERY, q.TASK_DURATION, exemplar=True),
            "s",
            "Run time percentiles, every outcome (failures too). The dots are exemplars: click one to open "
            "that run's trace in Tempo.",
            DURATION,
            red="runs approach the 240 s soft time limit and will be cut (`time_limit_exceeded` dead letters). "
            "Open a slow run's trace from an exemplar to see where the time goes (SQL, a remote call).",
        ),
        Panel(
            f"Run duration p99 by {duration_split}",
            "timeseries",
            (
                Target(
                    q.quantile(0.99, CELERY, q.TASK_DURATION, by=(duration_split,)),
                    f"{{{{{duration_split}}}}}",
                    exemplar=True,
                ),
            ),
            "s",
            f"99th percentile of the run time per {duration_split}, with exemplars linking to traces.",
            DURATION,
            red="this series' runs approach the soft time limit. Open an exemplar's trace.",
            task_links=not one_task,
        ),
        Panel(
            "Queue wait",
            "timeseries",
            _quantiles(CELERY, q.TASK_QUEUE_WAIT, exemplar=False),
            "s",
            "Time from publish (or from the ETA, for countdowns and retry backoff) to the start of the run: "
            "time spent waiting for a free worker, deliberate delays excluded.",
            QUEUE_WAIT,
            red="workers are saturated: promos start late and notifications lag. Check *Backlog* and "
            "*Workers up*; add workers or concurrency.",
            alert="CeleryQueueWaitHigh",
        ),
        Panel(
            f"Queue wait p99 by {wait_split}",
            "timeseries",
            (Target(q.quantile(0.99, CELERY, q.TASK_QUEUE_WAIT, by=(wait_split,)), f"{{{{{wait_split}}}}}"),),
            "s",
            f"99th percentile of the queue wait per {wait_split}: who waits behind whom.",
            QUEUE_WAIT,
            red="these runs wait for a worker. Long runs of other tasks may hold the workers (compare the "
            "overview's *Run duration p99 by task*); add workers or give the slow task a queue of its own.",
            alert="CeleryQueueWaitHigh",
            task_links=not one_task,
        ),
    )


def _queues() -> tuple[Panel, ...]:
    backlog_growth = f"sum by (queue) (max by (priority, queue) (deriv({CELERY.select(q.QUEUE_BACKLOG)}[10m]))) * 60"
    return (
        Panel(
            "Backlog per queue",
            "timeseries",
            (Target(q.gauge(CELERY, q.QUEUE_BACKLOG, by=("queue",)), "{{queue}}"),),
            "short",
            "Messages waiting in Redis per queue (all four priority lists). Countdown tasks held by workers "
            "are not in it.",
            BACKLOG,
            red="work arrives faster than workers take it. Check *Workers up* and *Run duration*; add workers "
            "or look for stuck runs (`celery -A marketplace inspect active`).",
            alert="CeleryQueueBacklogGrowing",
            width=8,
        ),
        Panel(
            "Backlog trend",
            "timeseries",
            (Target(backlog_growth, "{{queue}}"),),
            "mpm",
            "How fast each backlog grows (positive) or drains (negative), in messages per minute, fitted over "
            "the last 10 minutes.",
            BACKLOG_GROWTH,
            red="the backlog has grown steadily for 10 minutes and will not drain by itself. Add workers before "
            "*Queue wait* turns red.",
            alert="CeleryQueueBacklogGrowing",
            width=8,
        ),
        Panel(
            "Oldest waiting message",
            "timeseries",
            (Target(f"max by (queue) ({CELERY.select(q.QUEUE_OLDEST_MESSAGE_AGE)})", "{{queue}}"),),
            "s",
            "How long the oldest message waiting in Redis has waited since its publish, per queue (the oldest of "
            "its priority lists; 0 when empty).",
            OLDEST_MESSAGE,
            red="a message has waited 5 minutes: nothing takes from the queue. Check *Since last message received*: "
            "stuck consumers (CeleryWorkerNotConsuming) or runs that never end (`celery -A marketplace inspect "
            "active`).",
            alert="CeleryQueueStalled",
            width=8,
        ),
    )


def _workers() -> tuple[Panel, ...]:
    since = f"time() - max by (instance, queue) ({CELERY.select(q.WORKER_LAST_RECEIVED)})"
    return (
        Panel(
            "Since last message received",
            "timeseries",
            (Target(since, "{{instance}} {{queue}}"),),
            "s",
            "Per worker (its main process) and queue it consumes: seconds since its consumer last received a task "
            "message. Unlike the heartbeat, it stops when the consumer is stuck. High is normal for an idle queue.",
            SINCE_RECEIVED,
            red="nothing received for 2 minutes: harmless if the queue is empty (*Backlog per queue*); with "
            "messages waiting and the worker idle, its consumer is stuck - restart it.",
            alert="CeleryWorkerNotConsuming",
        ),
        Panel(
            "Tasks held by workers",
            "timeseries",
            (Target(f"sum by (state) (max by (instance, state) ({CELERY.select(q.WORKER_TASKS)}))", "{{state}}"),),
            "short",
            "Task messages the workers hold, summed over workers: active (running in a child), reserved (waiting "
            "for a free child), scheduled (countdowns and ETAs held until due).",
            no_threshold="the counts follow the workload and the concurrency; reserved growing while active stays "
            "at the pool size means the workers are full.",
            stacked=True,
        ),
    )


def _dead_letters_and_beat() -> tuple[Panel, ...]:
    pending_by_task = q.gauge(CELERY, q.DEAD_LETTERS_PENDING, by=("task",))
    last_success = q.gauge(CELERY, q.BEAT_LAST_SUCCESS, total=False)
    since_success = f"(time() - {last_success}) / {q.gauge(CELERY, q.BEAT_INTERVAL, total=False)}"
    return (
        Panel(
            "Dead letters pending by task",
            "bargauge",
            # Tasks without pending dead letters show 0, so an empty panel never looks like "no data".
            (Target(_zero_if_absent(pending_by_task, ("task",)), "{{task}}"),),
            "short",
            "Pending dead letters per task (the dead letter's own task name; `(none)` for undecodable messages).",
            DEAD_LETTERS,
            red="this task failed for good. `manage.py dlq list --task NAME`, `dlq show ID`; fix, then replay "
            "(docs/dead-letters.md).",
            alert="DeadLettersPending",
            width=6,
            task_links=True,
        ),
        Panel(
            "Beat: intervals since last success",
            "bargauge",
            (Target(since_success, "{{entry}}"),),
            "short",
            "Per beat entry, the time since its last successful run divided by its interval: 1 is on time.",
            BEAT_MISSED,
            red="the entry missed three runs: beat is down or its runs fail. Run exactly one `celery -A "
            "marketplace beat`; check the entry's task on the per-task dashboard.",
            alert="CeleryBeatEntryMissed",
            width=6,
            min=0,
            max=4,
        ),
        Panel(
            "Beat: last success",
            "stat",
            (Target(f"{last_success} * 1000", "{{entry}}"),),
            "dateTimeFromNow",
            "When each beat entry last ran successfully.",
            no_threshold="intervals differ per entry (30 s to a day); *Beat: intervals since last success* "
            "carries the red.",
            width=6,
        ),
        Panel(
            "Beat: sends by outcome",
            "timeseries",
            (Target(q.rate_sum(CELERY, q.BEAT_TICKS, by=("entry", "outcome")), "{{entry}} {{outcome}}"),),
            "ops",
            "Entries beat sent per second, by entry and outcome: `sent`, or `failed` when the publish raised (the "
            "broker unreachable: beat sends again at the entry's next run). Each send is a `beat <entry>` trace.",
            no_threshold="a failed send is tried again at the entry's next run; *Beat: intervals since last "
            "success* carries the red.",
            width=6,
        ),
    )


def celery_rows(*, one_task: bool) -> tuple[Row, ...]:
    """The Celery panels, for every task (the overview) or for ``$task`` alone."""
    rows = (
        Row("At a glance", _stats(one_task=one_task)),
        Row("Throughput and outcomes", _outcomes(one_task=one_task)),
        Row("Run duration and queue wait", _latency(one_task=one_task)),
        Row("Queues", _queues()),
    )
    if one_task:
        return rows
    return (*rows, Row("Workers", _workers()), Row("Dead letters and beat", _dead_letters_and_beat()))


def _count_stat(title: str, metric: q.Metric, shows: str, no_threshold: str) -> Panel:
    """A stat of how many ``metric`` events happened in the selected time range (0 when none)."""
    expr = f"{q.increase_sum(DOMAIN, metric)} or vector(0)"
    legend = title.split()[-1]
    return Panel(title, "stat", (Target(expr, legend, instant=True),), "short", shows, no_threshold=no_threshold,
                 width=4, height=4)  # fmt: skip


def _promotion_panels() -> tuple[Row, ...]:
    sent = q.increase_sum(DOMAIN, q.NOTIFICATIONS_SENT)
    failed = q.increase_sum(DOMAIN, q.NOTIFICATIONS_FAILED)
    sent_by = q.rate_sum(DOMAIN, q.NOTIFICATIONS_SENT, by=("channel",))
    failed_by = q.rate_sum(DOMAIN, q.NOTIFICATIONS_FAILED, by=("channel",))
    promo_tasks = 'task=~"promotions.tasks.*"'
    lag_red = (
        "promos go live more than a second late (SLO: p99 at most 1 s). Lags near 60 s mean the countdown tasks "
        "did not run and only the sweep activates. Check *Queue wait* and *Workers up* on the Celery overview, "
        "then the `check-flash-promos-every-minute` entry on its beat panels."
    )

    def per_minute(metric: q.Metric) -> str:
        return f"{q.rate_sum(DOMAIN, metric)} * 60 or vector(0)"

    stats = (
        Panel(
            "Activation lag p99",
            "stat",
            # Activations are rare and bursty: over 30 minutes, as the alert, or the stat is mostly empty.
            (Target(q.quantile(0.99, DOMAIN, q.PROMO_ACTIVATION_LAG, window="30m"), "p99"),),
            "s",
            "99th percentile of `activated_at - starts_at` of the promos activated in the last 30 minutes.",
            ACTIVATION_LAG,
            red=lag_red,
            alert="PromoActivationLagHigh",
            width=4,
            height=4,
        ),
        _count_stat(
            "Promos activated",
            q.PROMOS_ACTIVATED,
            "Promos that went live in the selected time range (approximately: Prometheus' `increase`).",
            "the count follows the catalogue, not the system's health.",
        ),
        _count_stat(
            "Promos ended",
            q.PROMOS_ENDED,
            "Promos ended in the selected time range, including those whose window passed while scheduled.",
            "the count follows the catalogue, not the system's health.",
        ),
        _count_stat(
            "Notifications sent",
            q.NOTIFICATIONS_SENT,
            "Notifications delivered in the selected time range, every channel.",
            "the count follows subscriptions and promos.",
        ),
        Panel(
            "Notification failure ratio",
            "stat",
            (
                Target(
                    q.ratio(failed, f"({sent} or vector(0)) + ({failed} or vector(0))", idle_is_zero=True),
                    "failed",
                    instant=True,
                ),
            ),
            "percentunit",
            "Share of the notifications of the selected time range given up on (attempts used up or a permanent "
            "error); 0 when none were due.",
            FAILURE_RATIO,
            red="a channel rejects deliveries: the failed rows keep `last_error` (admin: Notifications, filter "
            "by status). Fix the channel's credentials or endpoint.",
            width=4,
            height=4,
        ),
        Panel(
            "Notification backlog",
            "stat",
            (Target(q.gauge(DOMAIN, q.NOTIFICATIONS_BACKLOG), "pending + sending"),),
            "short",
            "Notifications pending or being sent now.",
            above(1000, 10000),
            red="delivery does not keep up with promos going live. Check *Notification backlog by status* and "
            "the delivery tasks' queue wait.",
            width=4,
            height=4,
        ),
    )
    flow = (
        Panel(
            "Activation lag",
            "timeseries",
            _quantiles(DOMAIN, q.PROMO_ACTIVATION_LAG, exemplar=False),
            "s",
            "How late promos go live: `activated_at - starts_at`. Promos starting within the countdown horizon "
            "go live within a second; the 60 s sweep catches the rest.",
            ACTIVATION_LAG,
            red=lag_red,
            alert="PromoActivationLagHigh",
        ),
        Panel(
            "Promos activated and ended",
            "timeseries",
            (
                Target(per_minute(q.PROMOS_ACTIVATED), "activated"),
                Target(per_minute(q.PROMOS_ENDED), "ended"),
            ),
            "cpm",
            "Promos going live and ending, per minute.",
            no_threshold="the counts follow the catalogue; *Activation lag* says whether they go live on time.",
        ),
        Panel(
            "Notifications delivered and failed",
            "timeseries",
            (
                Target(sent_by, "sent via {{channel}}"),
                Target(f"{failed_by} or 0 * {sent_by}", "failed via {{channel}}"),
            ),
            "mps",
            "Notifications per second by channel (console, email, sns): delivered, and given up on.",
            no_threshold="volume follows promos; *Notification failure ratio* carries the red.",
        ),
        Panel(
            "Notification backlog by status",
            "timeseries",
            (Target(q.gauge(DOMAIN, q.NOTIFICATIONS_BACKLOG, total=False), "{{status}}"),),
            "short",
            "Notifications `pending` (waiting for a delivery batch) and `sending` (leased by a batch now).",
            above(1000, 10000),
            red="delivery does not keep up. Rows stuck in `sending` past the lease are reclaimed by the next "
            "`process_notification_queue`; a growing `pending` needs more delivery workers.",
        ),
        Panel(
            "Promotion tasks: failure ratio",
            "timeseries",
            (
                Target(
                    q.ratio(
                        q.rate_sum(DOMAIN, q.TASKS_FINISHED, promo_tasks, FAILED, by=("task",)),
                        q.rate_sum(DOMAIN, q.TASKS_FINISHED, promo_tasks, by=("task",)),
                    ),
                    "{{task}}",
                ),
            ),
            "percentunit",
            "Share of runs of the promotions tasks that failed for good. Click a series for its dashboard.",
            FAILURE_RATIO,
            red="promos or notifications are not processed. Open the task's dashboard (*Errors by type*) and "
            "its dead letters.",
            alert="CeleryTaskFailureRatioHigh",
            width=24,
            task_links=True,
            min=0,
        ),
    )
    return Row("At a glance", stats), Row("Promotions and notifications", flow)


_QUEUE = Variable("queue", "Queue", f"label_values({q.TASKS_FINISHED.name}, queue)")
_TASK_QUERY = f'label_values({q.TASKS_FINISHED.name}{{queue=~"$queue"}}, task)'

CELERY_OVERVIEW = Board(
    uid="celery-overview",
    title="Celery overview",
    description="Every Celery task of the marketplace: throughput, failures, latency, queues, dead letters, beat.",
    tags=("marketplace", "celery"),
    variables=(_QUEUE, Variable("task", "Task", _TASK_QUERY)),
    rows=celery_rows(one_task=False),
    links=(("Per task", "celery-task"), ("Promotions", "promotions")),
)
CELERY_TASK = Board(
    uid="celery-task",
    title="Celery task",
    description="One Celery task (the `task` variable): the overview's panels for it, plus its errors by type.",
    tags=("marketplace", "celery"),
    variables=(_QUEUE, Variable("task", "Task", _TASK_QUERY, include_all=False)),
    rows=celery_rows(one_task=True),
    links=(("Celery overview", "celery-overview"), ("Promotions", "promotions")),
)
PROMOTIONS = Board(
    uid="promotions",
    title="Promotions",
    description="The flash promotions domain: promos going live on time, notifications delivered, the error "
    "budgets of their SLOs.",
    tags=("marketplace", "promotions"),
    variables=(),
    rows=(*_promotion_panels(), slo.budget_row()),
    links=(("Celery overview", "celery-overview"), ("Per task", "celery-task")),
)
BOARDS = (CELERY_OVERVIEW, CELERY_TASK, PROMOTIONS)
