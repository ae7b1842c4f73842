"""``manage.py dlq``: find, understand, replay and purge dead letters.

    dlq list    [filters] [--limit N] [--json]
    dlq show    ID [--json]
    dlq stats   [--json]
    dlq replay  (ID... | --all | filters) [--again] [--dry-run] [--limit N] [--rate PER_SECOND] [--queue Q]
    dlq purge   (ID... | --older-than DURATION | --status S) [--dry-run] [--yes]

The work lives in ``observability.deadletters.services`` and ``.selectors``; this module parses, confirms
and prints.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import re
import sys
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from tqdm import tqdm

from observability import logs as obs_logging
from observability import telemetry
from observability.deadletters import services as dead_letters
from observability.deadletters.models import DeadLetter, DeadLetterReason, DeadLetterStatus
from observability.deadletters.selectors import DeadLetterFilter, dead_letters_filter, dead_letters_stats

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: The earliest time Python represents: every duration is counted back from now and must stay after it.
_EARLIEST = datetime.min.replace(tzinfo=UTC)
#: Postgres' largest bigint: a larger ``LIMIT`` is a database error.
_BIGINT_MAX = 2**63 - 1
#: One publication a day. Slower is of no use, and far slower (under 1e-10 per second) overflows ``time.sleep``.
_SLOWEST_RATE = 1 / 86400


def parse_duration(value: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w``, counted back from now: one reaching before the year 1 is refused
    here, so no caller's ``now - duration`` can overflow."""
    match = _DURATION.match(value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration: use a number and a unit, like 30m, 2h or 7d.")
    try:
        duration = timedelta(**{_UNITS[match[2]]: int(match[1])})
    except (OverflowError, ValueError):  # past timedelta's range, or more digits than int() reads
        duration = timedelta.max
    if duration > timezone.now() - _EARLIEST:
        raise argparse.ArgumentTypeError(f"{value!r} is too long: counted back from now it reaches before the year 1.")
    return duration


def parse_time(value: str) -> datetime:
    """An ISO 8601 time (UTC when it has no offset) or a duration before now (``2h``: two hours ago)."""
    if _DURATION.match(value.strip()):
        return timezone.now() - parse_duration(value)
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an ISO 8601 time (2026-11-29T10:00:00Z) nor a duration (2h, 7d)."
        )
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


def _positive(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= _BIGINT_MAX:  # "²" is a digit too
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number from 1 to {_BIGINT_MAX}.")
    return int(value)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not _SLOWEST_RATE <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a rate from {_SLOWEST_RATE:.7f} (one a day) up.")
    return number


class Command(BaseCommand):
    help = "Inspect, replay and purge dead letters (tasks that failed for good)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{list,show,stats,replay,purge}")

        listing = sub.add_parser("list", help="List dead letters, newest failure first.")
        self._add_filters(listing)
        listing.add_argument("--limit", type=_positive, default=50, help="Show at most N entries (default 50).")
        listing.add_argument("--json", action="store_true", help="Print JSON lines for scripts.")

        show = sub.add_parser("show", help="Show everything stored for one dead letter, traceback included.")
        show.add_argument("id", type=int, help="The dead letter's id.")
        show.add_argument("--json", action="store_true", help="Print JSON.")

        stats = sub.add_parser("stats", help="Counts by task, reason and status; age of the oldest pending entry.")
        stats.add_argument("--json", action="store_true", help="Print JSON.")

        replay = sub.add_parser("replay", help="Publish the tasks of dead letters again, under new task ids.")
        replay.add_argument(
            "ids", nargs="*", type=int, metavar="ID",
            help="Dead letters to replay. One id no entry has refuses the whole command: nothing is published.",
        )  # fmt: skip
        replay.add_argument("--all", action="store_true", help="Replay every pending dead letter.")
        self._add_filters(replay)
        replay.add_argument("--again", action="store_true", help="Also replay entries already replayed.")
        replay.add_argument("--dry-run", action="store_true", help="Print what would be published; change nothing.")
        replay.add_argument("--limit", type=_positive, help="Replay at most N entries.")
        replay.add_argument("--rate", type=_positive_float, help="Publish at most this many tasks per second.")
        replay.add_argument("--queue", help="Publish to this queue instead of each entry's original queue.")
        replay.add_argument("--operator", default=None, help="Name recorded as the operator (default: $USER).")

        purge = sub.add_parser("purge", help="Delete dead letters for good.")
        purge.add_argument(
            "ids", nargs="*", type=int, metavar="ID",
            help="Dead letters to delete. One id no entry has refuses the whole command: nothing is deleted.",
        )  # fmt: skip
        purge.add_argument("--older-than", type=parse_duration, help="Entries last failed longer ago than this (7d).")
        purge.add_argument("--status", choices=DeadLetterStatus.values, help="Entries in this status.")
        purge.add_argument("--dry-run", action="store_true", help="Print what would be deleted; change nothing.")
        purge.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    @staticmethod
    def _add_filters(parser: CommandParser) -> None:
        parser.add_argument("--task", help="Only this task name (promotions.tasks.check_active_promos).")
        parser.add_argument("--reason", choices=DeadLetterReason.values, help="Only this reason.")
        parser.add_argument("--exception", help="Only this exception type (class name or dotted path).")
        parser.add_argument("--status", choices=DeadLetterStatus.values, help="Only this status.")
        parser.add_argument("--since", type=parse_time, help="Last failed at or after T (ISO time or 2h, 7d).")
        parser.add_argument("--until", type=parse_time, help="Last failed before T (ISO time or 2h, 7d).")

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        if self.stdout.isatty() or self.stderr.isatty():
            # A person is reading: log lines on stderr in the console format, even where the deployment sets
            # LOG_FORMAT=json for its services. Off a terminal LOG_FORMAT applies (JSON for a log shipper).
            obs_logging.configure_logging(fmt="console")
        # The INFO events of a replay (one per entry) say what this command prints on stdout: not twice.
        # Warnings and errors (a purge's counts, a stopped replay) are still logged.
        services_log = logging.getLogger(dead_letters.__name__)
        level = services_log.level
        services_log.setLevel(logging.WARNING)
        # Replays and purges are counted (dead_letters.replayed / .purged) and flushed before exit.
        telemetry.setup("cli")
        try:
            getattr(self, f"_{subcommand}")(**options)
        finally:
            telemetry.shutdown()
            services_log.setLevel(level)

    # --- list / show / stats ------------------------------------------------------------------------------
    def _list(self, *, limit: int, json: bool, **options: Any) -> None:
        entries = list(dead_letters_filter(_criteria(options))[:limit])
        if json:
            for entry in entries:
                self.stdout.write(_dumps(_summary(entry)))
            return
        if not entries:
            self.stdout.write("No dead letters match.")
            return
        header = f"{'ID':>6}  {'LAST FAILED (UTC)':19}  {'STATUS':9}  {'REASON':21}  {'TASK':40}  EXCEPTION"
        self.stdout.write(header)
        for e in entries:
            exception = _printable(f"{e.exception_type.rsplit('.', 1)[-1]}: {_one_line(e.exception_message)}")
            self.stdout.write(
                f"{e.pk:>6}  {e.last_failed_at:%Y-%m-%d %H:%M:%S}  {e.status:9}  {e.reason:21}  "
                f"{_printable(e.task_name or '-')[:40]:40}  {exception}"
            )

    def _show(self, *, id: int, json: bool, **options: Any) -> None:
        _require_known([id])
        entry = DeadLetter.objects.get(pk=id)
        details = _details(entry)
        if json:
            self.stdout.write(_dumps(details))
            return
        for key, value in details.items():
            if key in {"traceback", "raw_message"} and value:
                self.stdout.write(f"{key}:\n{_printable(value, keep_lines=True)}")
            elif key == "replays":
                for replay in value:
                    self.stdout.write(
                        f"replay: {replay['replayed_at']} by {replay['operator']} as {replay['new_task_id']}"
                    )
            else:
                text = value if not isinstance(value, dict | list) else _dumps(value)
                self.stdout.write(f"{key}: {_printable(str(text))}")

    def _stats(self, *, json: bool, **options: Any) -> None:
        stats = dead_letters_stats()
        if json:
            self.stdout.write(_dumps(stats))
            return
        self.stdout.write(f"total: {stats['total']}    oldest pending: {_age(stats['oldest_pending_age_seconds'])}")
        for title in ("by_status", "by_reason", "by_task"):
            self.stdout.write(f"{title.replace('_', ' ')}:")
            for key, count in stats[title].items():
                self.stdout.write(f"  {count:>8}  {_printable(key or '(no task)')}")

    # --- replay / purge -----------------------------------------------------------------------------------
    def _replay(self, *, ids: list[int], all: bool, again: bool, dry_run: bool, **options: Any) -> None:
        _require_known(ids)
        criteria = _criteria(options, ids=ids)
        if not all and criteria.is_empty:
            raise CommandError("Name what to replay: entry IDs, --all, or filters (--task, --reason, ...).")
        if all and not criteria.is_empty:
            raise CommandError("--all replays every pending entry: do not combine it with IDs or filters.")
        if criteria.status == DeadLetterStatus.DISCARDED:
            raise CommandError("Discarded entries are never replayed.")
        if criteria.status == DeadLetterStatus.REPLAYED and not again:
            raise CommandError("Only pending entries are replayed; add --again to replay replayed ones.")
        entries = dead_letters_filter(criteria)
        total = entries.count() if options["limit"] is None else min(entries.count(), options["limit"])
        operator = options["operator"] or getpass.getuser()
        quiet = not sys.stderr.isatty() or total < 100
        try:
            with tqdm(total=total, unit="task", disable=quiet, file=sys.stderr) as bar:
                result = dead_letters.dead_letters_replay(
                    entries,
                    operator=operator,
                    again=again,
                    queue=options["queue"],
                    limit=options["limit"],
                    rate=options["rate"],
                    dry_run=dry_run,
                    on_progress=bar.update,
                )
        except dead_letters.ReplayStoppedError as stopped:
            # What was published is committed: print it as a complete run would. Named entries the replay did
            # not reach are pending, not skipped: the error says so, without a line for each.
            self._print_replay(stopped.result, verb="Would publish" if dry_run else "Published", named_ids=[])
            then = "run the replay again to go on" if stopped.interrupted else "replay them once the broker is back"
            raise CommandError(f"{stopped}: {then}.") from stopped
        self._print_replay(result, verb="Would publish" if dry_run else "Published", named_ids=ids)

    def _print_replay(self, result: dead_letters.ReplayResult, *, verb: str, named_ids: list[int]) -> None:
        """A line per published and per skipped entry, one per entry of ``named_ids`` the replay did not take
        (not pending, or taken by a replay running alongside) saying why, and a summary."""
        for (entry_id, new_id), task_name in zip(result.published, result.task_names, strict=True):
            # A dry run's line has no task id: ids are drawn at random when the entry is published.
            as_task = "" if new_id is None else f" as task {new_id}"
            self.stdout.write(
                _printable(f"{verb} dead letter {entry_id} ({task_name}){as_task} to queue {result.queues[entry_id]}")
            )
        for entry_id, why in result.skipped.items():
            self.stderr.write(f"Skipped dead letter {entry_id}: {why}")
        not_taken = set(named_ids) - {entry_id for entry_id, _ in result.published} - set(result.skipped)
        for entry_id, status in DeadLetter.objects.filter(pk__in=not_taken).values_list("pk", "status"):
            hint = " (add --again)" if status == DeadLetterStatus.REPLAYED else ""
            self.stderr.write(f"Skipped dead letter {entry_id}: it is {status}{hint}")
        ids_note = " (task ids are assigned when published)" if verb == "Would publish" else ""
        self.stdout.write(f"{verb} {len(result.published)} task(s); skipped {len(result.skipped)}.{ids_note}")

    def _purge(self, *, ids: list[int], older_than: timedelta | None, status: str | None, **options: Any) -> None:
        if not ids and older_than is None and status is None:
            raise CommandError("Name what to purge: entry IDs, --older-than DURATION or --status S.")
        _require_known(ids)
        entries: QuerySet[DeadLetter] = DeadLetter.objects.all()
        if ids:
            entries = entries.filter(pk__in=ids)
        if older_than is not None:
            entries = entries.filter(last_failed_at__lt=timezone.now() - older_than)
        if status:
            entries = entries.filter(status=status)
        count = entries.count()
        if options["dry_run"]:
            self.stdout.write(f"Would delete {count} dead letter(s).")
            return
        if count and not options["yes"]:
            if not sys.stdin.isatty():
                raise CommandError(f"Refusing to delete {count} dead letter(s) without --yes (no terminal to ask).")
            if input(f"Delete {count} dead letter(s) for good? [y/N] ").strip().lower() not in {"y", "yes"}:
                raise CommandError("Nothing deleted.")
        counts = dead_letters.dead_letters_purge(entries, reason=f"manage.py dlq purge by {getpass.getuser()}")
        self.stdout.write(f"Deleted {sum(counts.values())} dead letter(s).")


def _require_known(ids: list[int]) -> None:
    """Refuse the whole command when an id names no entry: a typo among several ids would otherwise act on
    the others and report ``0`` for it, as if it had been done."""
    unknown = sorted(set(ids) - set(DeadLetter.objects.filter(pk__in=ids).values_list("pk", flat=True)))
    if len(unknown) == 1:
        raise CommandError(f"No dead letter with id {unknown[0]}: see 'manage.py dlq list'.")
    if unknown:
        listed = ", ".join(map(str, unknown))
        raise CommandError(f"No dead letters with ids {listed}: see 'manage.py dlq list'. Nothing was done.")


def _criteria(options: dict[str, Any], ids: list[int] | None = None) -> DeadLetterFilter:
    return DeadLetterFilter(
        task=options.get("task"),
        reason=options.get("reason"),
        exception=options.get("exception"),
        status=options.get("status"),
        since=options.get("since"),
        until=options.get("until"),
        ids=tuple(ids or ()),
    )


def _summary(entry: DeadLetter) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "task_name": entry.task_name,
        "task_id": entry.task_id,
        "reason": entry.reason,
        "status": entry.status,
        "exception_type": entry.exception_type,
        "exception_message": entry.exception_message,
        "retries": entry.retries,
        "delivery_count": entry.delivery_count,
        "first_failed_at": entry.first_failed_at,
        "last_failed_at": entry.last_failed_at,
        "trace_id": entry.trace_id,
        "fingerprint": entry.fingerprint,
    }


def _details(entry: DeadLetter) -> dict[str, Any]:
    return {
        **_summary(entry),
        "args": entry.args,
        "kwargs": entry.kwargs,
        "queue": entry.queue,
        "exchange": entry.exchange,
        "routing_key": entry.routing_key,
        "headers": entry.headers,
        "worker_host": entry.worker_host,
        "failure_count": entry.failure_count,
        "replay_of": entry.headers.get(dead_letters.REPLAY_OF_HEADER),
        "traceback": entry.traceback,
        "raw_message": entry.raw_message,
        "replays": [
            {"new_task_id": r.new_task_id, "queue": r.queue, "operator": r.operator, "replayed_at": r.replayed_at}
            for r in entry.replays.all()
        ],
    }


def _dumps(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v), sort_keys=False)


def _printable(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with control and format characters (ESC sequences, bidi overrides, zero-width) written as escapes,
    as ``--json`` writes them: a dead letter's text is whatever a producer sent, and raw it can clear the
    operator's screen, hide its own row or rename the terminal. ``keep_lines`` keeps newlines and tabs."""
    return "".join(
        char.encode("unicode_escape").decode()
        if unicodedata.category(char) in _UNPRINTABLE and not (keep_lines and char in "\n\t")
        else char
        for char in text
    )


#: Unicode categories written as escapes: controls (C0, DEL, C1) and format characters.
_UNPRINTABLE = frozenset({"Cc", "Cf"})


def _one_line(text: str, width: int = 60) -> str:
    return " ".join(text.split())[:width]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    return str(timedelta(seconds=int(seconds)))
