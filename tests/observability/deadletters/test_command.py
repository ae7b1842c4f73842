"""``manage.py dlq`` as an operator types it - list, show, stats, replay, purge - and the daily retention task.

Rows are written straight into Postgres (pytest-django's test database); replays are published through the
project's Celery app to the test Redis database, each test to a queue of its own, and read back from there.
Argument errors are checked in a real ``python manage.py dlq`` process, where argparse exits with status 2.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from structlog.testing import capture_logs

from observability.deadletters.models import DeadLetter, DeadLetterReplay
from observability.deadletters.services import REPLAY_OF_HEADER
from observability.deadletters.tasks import purge_expired_dead_letters
from observability.telemetry import REPLAY_TRACEPARENT_HEADER
from tests.conftest import ROOT, TEST_BROKER, _test_database_url

pytestmark = pytest.mark.django_db

#: A task ``manage.py`` registers (the test tasks of ``tests/tasks.py`` are not registered there).
REGISTERED = "promotions.tasks.deliver_notification_batch"
SUMMARY_KEYS = {
    "id", "task_name", "task_id", "reason", "status", "exception_type", "exception_message", "retries",
    "delivery_count", "first_failed_at", "last_failed_at", "trace_id", "fingerprint",
}  # fmt: skip
DETAIL_KEYS = SUMMARY_KEYS | {
    "args", "kwargs", "queue", "exchange", "routing_key", "headers", "worker_host", "failure_count", "replay_of",
    "traceback", "raw_message", "replays",
}  # fmt: skip


def token() -> str:
    return uuid.uuid4().hex


def _entry(*, ago: timedelta = timedelta(0), **fields: Any) -> DeadLetter:
    """One pending ``non_retryable_error`` entry of a registered task, last failed ``ago`` before now."""
    failed_at = timezone.now() - ago
    values: dict[str, Any] = {
        "dedup_key": token(),
        "task_id": token(),
        "task_name": REGISTERED,
        "reason": "non_retryable_error",
        "args": [],
        "exception_type": "observability.errors.PermanentError",
        "exception_message": "this input can never work",
        "fingerprint": "f" * 16,
        "first_failed_at": failed_at,
        "last_failed_at": failed_at,
        **fields,
    }
    return DeadLetter.objects.create(**values)


def _entries(count: int, **fields: Any) -> list[DeadLetter]:
    """``count`` entries like ``_entry``'s, failed now, in one insert."""
    now = timezone.now()
    values: dict[str, Any] = {
        "task_name": REGISTERED, "reason": "non_retryable_error", "args": [],
        "exception_type": "observability.errors.PermanentError", "fingerprint": "f" * 16,
        "first_failed_at": now, "last_failed_at": now, **fields,
    }  # fmt: skip
    return DeadLetter.objects.bulk_create(
        DeadLetter(dedup_key=token(), task_id=token(), **values) for _ in range(count)
    )


def dlq(*args: str) -> tuple[str, str]:
    """Run ``manage.py dlq ARGS`` in this process; returns its stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command("dlq", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def listed_ids(*args: str) -> list[int]:
    """The ids ``dlq list --json ARGS`` prints, in its order."""
    out, _ = dlq("list", "--json", *args)
    return [json.loads(line)["id"] for line in out.splitlines()]


def _exchange_of(queue: str) -> str:
    return queue if TEST_BROKER == "rabbitmq" else ""


def counted(**counts: int) -> list[str]:
    """Lines of one ``dlq stats`` section, in the order given."""
    return [f"  {count:>8}  {key}" for key, count in counts.items()]


class Terminal(io.StringIO):
    """A standard input that is a terminal."""

    def isatty(self) -> bool:
        return True


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TestList:
    def test_a_table_with_a_header_and_one_row_per_entry_newest_failure_first(self):
        """``dlq list`` prints a header (ID, last failed in UTC, status, reason, task, exception) and one row per
        entry, newest last failure first (the higher id first on a tie); the exception is its class name and
        its message on one line; a task name is cut to its 40-character column; no task shows as ``-``."""
        older = _entry(
            ago=timedelta(hours=3), task_name="promotions.tasks.sync_promo", reason="max_retries_exceeded",
            exception_type="observability.errors.TransientError", exception_message="try\n   again  later",
        )  # fmt: skip
        newest = _entry(ago=timedelta(hours=1))
        same_time = _entry(
            task_name="", reason="undecodable_message", exception_type="kombu.exceptions.DecodeError",
            exception_message="not JSON", status="discarded",
            first_failed_at=newest.last_failed_at, last_failed_at=newest.last_failed_at,
        )  # fmt: skip

        out, _ = dlq("list")

        lines = out.splitlines()
        assert lines[0].split() == ["ID", "LAST", "FAILED", "(UTC)", "STATUS", "REASON", "TASK", "EXCEPTION"]
        assert [int(line.split()[0]) for line in lines[1:]] == [same_time.pk, newest.pk, older.pk]
        assert lines[3] == (
            f"{older.pk:>6}  {older.last_failed_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}  pending    "
            f"max_retries_exceeded   {'promotions.tasks.sync_promo':40}  TransientError: try again later"
        )
        assert lines[1].split()[3:6] == ["discarded", "undecodable_message", "-"]
        assert lines[1].endswith("DecodeError: not JSON")
        assert lines[2].endswith(f"  {REGISTERED[:40]}  PermanentError: this input can never work")

    def test_nothing_matching_says_so(self):
        """With no entry matching, the table is replaced by ``No dead letters match.``; ``--json`` prints
        nothing at all."""
        _entry(task_name="promotions.tasks.sync_promo")
        assert dlq("list", "--task", "promotions.tasks.other")[0] == "No dead letters match.\n"
        assert dlq("list", "--task", "promotions.tasks.other", "--json")[0] == ""

    def test_json_prints_one_parseable_object_per_line(self):
        """``--json`` prints one JSON object per entry and line, with the entry's summary: ids, task, reason,
        status, exception, counters, ISO 8601 times, trace id and fingerprint."""
        entry = _entry(ago=timedelta(minutes=5), retries=3, delivery_count=2, trace_id="a" * 32)
        _entry(ago=timedelta(minutes=10))

        out, _ = dlq("list", "--json")

        rows = [json.loads(line) for line in out.splitlines()]
        assert len(rows) == 2
        assert all(set(row) == SUMMARY_KEYS for row in rows)
        assert rows[0] == {
            "id": entry.pk, "task_name": REGISTERED, "task_id": entry.task_id, "reason": "non_retryable_error",
            "status": "pending", "exception_type": "observability.errors.PermanentError",
            "exception_message": "this input can never work", "retries": 3, "delivery_count": 2,
            "first_failed_at": entry.first_failed_at.isoformat(), "last_failed_at": entry.last_failed_at.isoformat(),
            "trace_id": "a" * 32, "fingerprint": "f" * 16,
        }  # fmt: skip
        assert datetime.fromisoformat(rows[0]["last_failed_at"]) == entry.last_failed_at

    def test_limit_caps_the_rows_newest_first_and_defaults_to_50(self):
        """``--limit N`` keeps the N newest entries; without it at most 50 are listed."""
        entries = [_entry(ago=timedelta(minutes=n)) for n in range(3)]
        assert listed_ids("--limit", "2") == [entries[0].pk, entries[1].pk]
        _entries(60)
        assert len(listed_ids()) == 50
        assert len(dlq("list")[0].splitlines()) == 1 + 50


class TestListFilters:
    @pytest.fixture
    def entries(self) -> dict[str, DeadLetter]:
        return {
            "a": _entry(ago=timedelta(hours=1)),
            "b": _entry(ago=timedelta(hours=3), task_name="promotions.tasks.sync_promo", reason="max_retries_exceeded",
                        exception_type="observability.errors.TransientError", status="replayed"),
            "c": _entry(ago=timedelta(days=3), task_name="promotions.tasks.sync_promo", reason="time_limit_exceeded",
                        exception_type="billiard.exceptions.TimeLimitExceeded", status="discarded"),
            "d": _entry(ago=timedelta(days=10), task_name="", reason="undecodable_message",
                        exception_type="kombu.exceptions.DecodeError"),
            "e": _entry(ago=timedelta(hours=5), task_name="promotions.tasks.check_active_promos",
                        exception_type="promotions.errors.PermanentError"),
        }  # fmt: skip

    def labels(self, entries: dict[str, DeadLetter], *args: str) -> str:
        by_id = {entry.pk: label for label, entry in entries.items()}
        return "".join(by_id[pk] for pk in listed_ids(*args))

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            ((), "abecd"),
            (("--task", "promotions.tasks.sync_promo"), "bc"),
            (("--reason", "non_retryable_error"), "ae"),
            (("--reason", "undecodable_message"), "d"),
            (("--status", "pending"), "aed"),
            (("--status", "replayed"), "b"),
            (("--status", "discarded"), "c"),
            (("--exception", "PermanentError"), "ae"),
            (("--exception", "DecodeError"), "d"),
            (("--exception", "Error"), ""),
            (("--exception", "observability.errors.PermanentError"), "a"),
            (("--exception", "billiard.exceptions.TimeLimitExceeded"), "c"),
            (("--since", "4h"), "ab"),
            (("--since", "7d"), "abec"),
            (("--until", "2h"), "becd"),
            (("--until", "1w"), "d"),
            (("--since", "7d", "--until", "4h"), "ec"),
            (("--since", "2d", "--task", "promotions.tasks.sync_promo"), "b"),
            (("--task", "promotions.tasks.sync_promo", "--status", "discarded"), "c"),
            (("--reason", "non_retryable_error", "--exception", "PermanentError", "--since", "2h"), "a"),
        ],
    )
    def test_each_filter_keeps_only_matching_entries_and_filters_combine(self, entries, args, expected):
        """``--task``, ``--reason``, ``--status`` match exactly; ``--exception`` matches a class name (not a
        part of one) or a dotted path; ``--since T`` keeps entries last failed at or after T and ``--until T``
        those before it, T being a duration before now; given together, every filter applies."""
        assert self.labels(entries, *args) == expected

    def test_since_and_until_take_iso_8601_times_naive_ones_in_utc(self, entries):
        """``--since``/``--until`` also take ISO 8601 times, with ``Z``, with an offset, or without one
        (then UTC)."""
        two_days_ago = timezone.now() - timedelta(days=2)
        assert self.labels(entries, "--since", iso(two_days_ago)) == "abe"
        assert self.labels(entries, "--until", iso(two_days_ago)) == "cd"
        plus_two = two_days_ago.astimezone(timezone.get_fixed_timezone(120)).isoformat()
        assert self.labels(entries, "--since", plus_two) == "abe"
        naive = two_days_ago.astimezone(UTC).replace(tzinfo=None).isoformat()
        assert self.labels(entries, "--since", naive) == "abe"
        # Naive means UTC: the same wall-clock time read two hours east is two hours earlier in UTC.
        four_hours_ago = (timezone.now() - timedelta(hours=4)).astimezone(UTC)
        assert self.labels(entries, "--since", four_hours_ago.replace(tzinfo=None).isoformat()) == "ab"
        shifted = four_hours_ago.replace(tzinfo=None).isoformat() + "+02:00"
        assert self.labels(entries, "--since", shifted) == "abe"

    def test_a_full_dotted_path_matches_that_exception_type_only(self):
        """``--exception`` with a full dotted path matches that exception type, not another type whose path
        merely ends with the same characters."""
        wanted = _entry(exception_type="observability.errors.PermanentError")
        _entry(exception_type="legacy_observability.errors.PermanentError")
        assert listed_ids("--exception", "observability.errors.PermanentError") == [wanted.pk]


class TestShow:
    def test_every_field_traceback_raw_message_and_replay_history(self):
        """``dlq show ID`` prints every stored field as ``name: value`` (args, kwargs and headers as JSON,
        ``replay_of`` from the header), the traceback and raw message in full on the lines after their name,
        and one ``replay:`` line per replay, newest first."""
        traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\nPermanentError: boom'
        entry = _entry(
            args=["order-42", 7], kwargs={"force": True}, queue="promos", exchange="", routing_key="promos",
            headers={"x-custom": "kept", REPLAY_OF_HEADER: 41}, worker_host="worker-1@h", failure_count=2,
            traceback=traceback, raw_message="{not json\nat all", trace_id="b" * 32, retries=1,
        )  # fmt: skip
        first, second = (
            DeadLetterReplay.objects.create(
                dead_letter=entry, new_task_id=f"new-{n}", queue="promos", operator=operator,
                replayed_at=timezone.now() - timedelta(hours=hours),
            )
            for n, operator, hours in [(1, "alice", 2), (2, "bob", 1)]
        )  # fmt: skip
        entry.refresh_from_db()

        out, _ = dlq("show", str(entry.pk))

        lines = out.splitlines()
        for line in [
            f"id: {entry.pk}", f"task_name: {REGISTERED}", f"task_id: {entry.task_id}", "reason: non_retryable_error",
            "status: pending", "exception_type: observability.errors.PermanentError",
            "exception_message: this input can never work", "retries: 1", "delivery_count: 1",
            f"first_failed_at: {entry.first_failed_at}", f"last_failed_at: {entry.last_failed_at}",
            f"trace_id: {'b' * 32}", f"fingerprint: {'f' * 16}", 'args: ["order-42", 7]', 'kwargs: {"force": true}',
            "queue: promos", "exchange: ", "routing_key: promos",
            f'headers: {{"x-custom": "kept", "{REPLAY_OF_HEADER}": 41}}', "worker_host: worker-1@h",
            "failure_count: 2", "replay_of: 41",
        ]:  # fmt: skip
            assert line in lines
        assert f"traceback:\n{traceback}\n" in out
        assert "raw_message:\n{not json\nat all\n" in out
        replays = [line for line in lines if line.startswith("replay:")]
        assert replays == [
            f"replay: {second.replayed_at} by bob as new-2",
            f"replay: {first.replayed_at} by alice as new-1",
        ]

    def test_json_holds_every_field_and_the_replays(self):
        """``dlq show ID --json`` prints one JSON object: the summary, the message, the failure and the replay
        history."""
        entry = _entry(args=[1], headers={"x-custom": "kept"}, traceback="Traceback ...\nboom", queue="promos")
        replay = DeadLetterReplay.objects.create(dead_letter=entry, new_task_id="new-1", queue="other",
                                                 operator="alice", replayed_at=timezone.now())  # fmt: skip

        details = json.loads(dlq("show", str(entry.pk), "--json")[0])

        assert set(details) == DETAIL_KEYS
        assert (details["id"], details["args"], details["kwargs"], details["queue"]) == (entry.pk, [1], {}, "promos")
        assert (details["headers"], details["replay_of"]) == ({"x-custom": "kept"}, None)
        assert (details["traceback"], details["raw_message"]) == ("Traceback ...\nboom", "")
        assert details["replays"] == [
            {"new_task_id": "new-1", "queue": "other", "operator": "alice",
             "replayed_at": replay.replayed_at.isoformat()},
        ]  # fmt: skip

    def test_an_unknown_id_is_an_error_that_says_how_to_list(self):
        """An id no entry has is a command error that points to ``dlq list``."""
        entry = _entry()
        with pytest.raises(CommandError, match=rf"No dead letter with id {entry.pk + 1000}: see 'manage.py dlq list'"):
            dlq("show", str(entry.pk + 1000))


#: What the probe's crafted entry carried: clear the screen, move up a row, rename the terminal, a bidi override.
HOSTILE = "\x1b[2J\x1b[1A\x1b]0;owned\x07\u202eboom"
ESCAPED = "\\x1b[2J\\x1b[1A\\x1b]0;owned\\x07\\u202eboom"


class TestControlCharacters:
    def test_list_prints_terminal_sequences_escaped(self):
        """Given an entry whose task name and message carry ESC sequences and a bidi override, ``dlq list``
        prints them as escapes (as ``--json`` does), never raw."""
        _entry(task_name=HOSTILE, exception_message=HOSTILE)

        out, _ = dlq("list")

        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert ESCAPED[:40] in out  # the task column is 40 characters wide
        assert f"PermanentError: {ESCAPED}" in out

    def test_show_prints_terminal_sequences_escaped_and_keeps_the_tracebacks_lines(self):
        """``dlq show`` escapes control characters in every field; a traceback keeps its newlines."""
        entry = _entry(task_name=HOSTILE, exception_message=HOSTILE, traceback=f"Traceback\n\t{HOSTILE}",
                       headers={"x": HOSTILE}, raw_message=HOSTILE)  # fmt: skip

        out, _ = dlq("show", str(entry.pk))

        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert f"task_name: {ESCAPED}" in out.splitlines()
        assert f"traceback:\nTraceback\n\t{ESCAPED}\n" in out


class TestStats:
    def test_counts_by_status_reason_and_task_and_the_oldest_pending_age(self):
        """``dlq stats`` prints the total, the age of the oldest pending entry (by first failure; other
        statuses do not count), and counts by status, reason and task (``(no task)`` for none)."""
        _entry(ago=timedelta(days=5), status="replayed")
        _entry(ago=timedelta(hours=1), first_failed_at=timezone.now() - timedelta(days=2))
        _entry(task_name="", reason="undecodable_message")
        _entry(task_name="promotions.tasks.sync_promo", reason="max_retries_exceeded", status="discarded")

        lines = dlq("stats")[0].splitlines()

        assert lines[0].startswith("total: 4    oldest pending: 2 days, 0:0")
        assert lines[1:] == [
            "by status:", *counted(discarded=1, pending=2, replayed=1),
            "by reason:", *counted(max_retries_exceeded=1, non_retryable_error=2, undecodable_message=1),
            "by task:", *counted(**{"(no task)": 1, REGISTERED: 2, "promotions.tasks.sync_promo": 1}),
        ]  # fmt: skip

    def test_json_and_an_empty_table(self):
        """``--json`` prints the same figures as one object (age in seconds); with no pending entry the age is
        ``none`` (``null`` in JSON)."""
        assert dlq("stats")[0].splitlines()[0] == "total: 0    oldest pending: none"
        _entry(status="replayed")
        assert json.loads(dlq("stats", "--json")[0]) == {
            "total": 1, "by_status": {"replayed": 1}, "by_reason": {"non_retryable_error": 1},
            "by_task": {REGISTERED: 1}, "oldest_pending_age_seconds": None,
        }  # fmt: skip
        _entry(ago=timedelta(hours=3))
        stats = json.loads(dlq("stats", "--json")[0])
        assert stats["by_status"] == {"pending": 1, "replayed": 1}
        assert 3 * 3600 <= stats["oldest_pending_age_seconds"] < 3 * 3600 + 60


class TestReplay:
    def test_by_ids_publishes_those_under_new_task_ids_and_records_it(self, broker):
        """``dlq replay ID...`` publishes the named entries' tasks under new task ids, marks them replayed,
        records operator, queue and new id, and prints one line per entry and a summary."""
        queue = f"dlq-ids-{token()}"
        first, second, untouched = _entries(3, queue=queue, routing_key=queue)

        out, err = dlq("replay", str(first.pk), str(second.pk), "--operator", "alice")

        replays = {r.dead_letter_id: r for r in DeadLetterReplay.objects.all()}
        assert set(replays) == {first.pk, second.pk}
        assert all((r.operator, r.queue) == ("alice", queue) for r in replays.values())
        assert {r.new_task_id for r in replays.values()}.isdisjoint({first.task_id, second.task_id})
        assert sorted(m["headers"]["id"] for m in broker.messages(queue)) == sorted(
            r.new_task_id for r in replays.values()
        )
        assert dict(DeadLetter.objects.values_list("id", "status")) == {
            first.pk: "replayed", second.pk: "replayed", untouched.pk: "pending",
        }  # fmt: skip
        assert out.splitlines() == [
            *(
                f"Published dead letter {e.pk} ({REGISTERED}) as task {replays[e.pk].new_task_id} to queue {queue}"
                for e in (first, second)
            ),
            "Published 2 task(s); skipped 0.",
        ]
        assert err == ""

    def test_by_reason_broker_refused_publishes_those_entries_in_bulk(self, broker):
        """``dlq replay --reason broker_refused`` publishes every pending entry Redis refused to hold, and only
        those: the bulk replay after a Redis memory incident."""
        queue = f"dlq-refused-{token()}"
        refused = _entries(3, queue=queue, routing_key=queue, reason="broker_refused")
        other = _entry(queue=queue, routing_key=queue, reason="undecodable_message")

        out, _ = dlq("replay", "--reason", "broker_refused")

        assert set(DeadLetterReplay.objects.values_list("dead_letter_id", flat=True)) == {e.pk for e in refused}
        assert len(broker.messages(queue)) == 3
        assert DeadLetter.objects.get(pk=other.pk).status == "pending"
        assert out.splitlines()[-1] == "Published 3 task(s); skipped 0."

    def test_by_filters_publishes_only_matching_pending_entries(self, broker):
        """Filters select what to replay, as in ``dlq list``; only pending entries among them are published."""
        queue = f"dlq-filters-{token()}"
        match = _entry(reason="max_retries_exceeded", queue=queue)
        _entry(reason="max_retries_exceeded", queue=queue, status="discarded")
        _entry(reason="max_retries_exceeded", queue=queue, status="replayed")
        _entry(reason="non_retryable_error", queue=queue)
        _entry(reason="max_retries_exceeded", queue=queue, ago=timedelta(days=2))

        out, _ = dlq("replay", "--reason", "max_retries_exceeded", "--since", "1d")

        assert broker.depth(queue) == 1
        assert DeadLetterReplay.objects.get().dead_letter_id == match.pk
        assert out.endswith("Published 1 task(s); skipped 0.\n")

    def test_all_publishes_every_pending_entry_and_no_other(self, broker):
        """``--all`` publishes every pending entry; replayed and discarded ones stay as they are."""
        queue = f"dlq-all-{token()}"
        pending = _entries(3, queue=queue)
        _entries(1, queue=queue, status="discarded")
        _entries(1, queue=queue, status="replayed")

        dlq("replay", "--all")

        assert broker.depth(queue) == 3
        assert set(DeadLetterReplay.objects.values_list("dead_letter_id", flat=True)) == {e.pk for e in pending}
        assert DeadLetter.objects.filter(status="replayed").count() == 4
        assert DeadLetter.objects.filter(status="discarded").count() == 1

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ((), r"Name what to replay: entry IDs, --all, or filters"),
            (("--all", "--task", REGISTERED), r"--all replays every pending entry: do not combine it"),
            (("--all", "--since", "1d"), r"do not combine it with IDs or filters"),
            (("--all", "{id}"), r"do not combine it with IDs or filters"),
            (("--status", "replayed"), r"add --again to replay replayed ones"),
            (("--status", "discarded", "--task", REGISTERED), r"Discarded entries are never replayed"),
        ],
    )
    def test_refuses_an_ambiguous_selection_and_publishes_nothing(self, broker, args, message):
        """With nothing named, with ``--all`` next to IDs or filters, or asked for non-pending entries without
        ``--again``, replay is a command error and nothing is published or marked."""
        queue = f"dlq-refused-{token()}"
        entry = _entry(queue=queue)
        _entry(queue=queue, status="replayed")

        with pytest.raises(CommandError, match=message):
            dlq("replay", *(arg.format(id=entry.pk) for arg in args))

        assert broker.depth(queue) == 0
        assert not DeadLetterReplay.objects.exists()
        assert DeadLetter.objects.filter(status="pending").count() == 1

    def test_status_replayed_with_again_publishes_replayed_entries_once_more(self, broker):
        """``--status replayed --again`` publishes the replayed entries again, recording one more
        replay each; pending ones are left for another run."""
        queue = f"dlq-again-{token()}"
        replayed = _entry(queue=queue, status="replayed")
        _entry(queue=queue)

        dlq("replay", "--status", "replayed", "--again")

        assert broker.depth(queue) == 1
        assert DeadLetterReplay.objects.get().dead_letter_id == replayed.pk
        assert DeadLetter.objects.filter(status="pending").count() == 1

    def test_limit_stops_after_n_publications(self, broker):
        """``--limit N`` publishes N entries and leaves the rest pending."""
        queue = f"dlq-limit-{token()}"
        _entries(5, queue=queue)

        out, _ = dlq("replay", "--all", "--limit", "2")

        assert broker.depth(queue) == 2
        assert DeadLetter.objects.filter(status="pending").count() == 3
        assert DeadLetterReplay.objects.count() == 2
        assert out.endswith("Published 2 task(s); skipped 0.\n")

    def test_queue_overrides_the_destination_queue_and_its_routing(self, broker):
        """``--queue Q`` publishes to Q, routed by Q, instead of the entry's own queue and routing key; the
        replay records Q. Without it the entry's queue and routing key are used."""
        original, other = f"dlq-original-{token()}", f"dlq-other-{token()}"
        moved = _entry(queue=original, routing_key=original)
        kept = _entry(queue=original, routing_key=original)

        dlq("replay", str(moved.pk), "--queue", other)

        (message,) = broker.messages(other)
        # Celery routes a queue named at run time through the default exchange on Redis, and through a topic
        # exchange of the queue's name on RabbitMQ (delayed delivery needs one).
        assert message["properties"]["delivery_info"] == {"exchange": _exchange_of(other), "routing_key": other}
        assert broker.depth(original) == 0
        assert DeadLetterReplay.objects.get(dead_letter=moved).queue == other

        dlq("replay", str(kept.pk))

        (message,) = broker.messages(original)
        assert message["properties"]["delivery_info"] == {"exchange": _exchange_of(original), "routing_key": original}
        assert DeadLetterReplay.objects.get(dead_letter=kept).queue == original

    def test_the_published_message_keeps_custom_headers_under_a_new_task_id(self, broker):
        """The replayed message is the entry's task, args and kwargs with its custom headers, plus
        ``x-dead-letter-replay-of`` (the entry id) and ``x-dead-letter-traceparent``; the protocol headers of the
        failed delivery (id, retries, eta, root and parent, origin, trace context, redelivery) are not carried
        over: the task runs under a new id as a fresh delivery."""
        queue = f"dlq-message-{token()}"
        old_id, trace = token(), "c" * 32
        entry = _entry(
            queue=queue, routing_key=queue, task_id=old_id, trace_id=trace, args=[], kwargs={"batch": 3},
            headers={
                "x-custom": "kept", "tenant": "acme", "lang": "py", "task": REGISTERED, "id": old_id, "retries": 4,
                "eta": "2026-11-29T04:17:12+00:00", "root_id": "old-root", "parent_id": "old-parent",
                "origin": "gen1@old-host", "argsrepr": "('old',)", "redelivered": True,
                "traceparent": f"00-{trace}-{'d' * 16}-01",
            },
        )  # fmt: skip

        dlq("replay", str(entry.pk))

        new_id = DeadLetterReplay.objects.get().new_task_id
        (message,) = broker.messages(queue)
        headers = message["headers"]
        assert (headers["x-custom"], headers["tenant"]) == ("kept", "acme")
        assert (headers[REPLAY_OF_HEADER], headers[REPLAY_TRACEPARENT_HEADER]) == (
            entry.pk,
            f"00-{trace}-{'d' * 16}-01",
        )
        assert headers["id"] == new_id != old_id
        assert (headers["task"], headers["retries"], headers["eta"]) == (REGISTERED, 0, None)
        assert headers["root_id"] not in {"old-root", old_id}
        assert headers["parent_id"] != "old-parent"
        assert headers["origin"] != "gen1@old-host"
        assert headers["argsrepr"] != "('old',)"
        assert "redelivered" not in headers
        assert headers.get("traceparent", "") != f"00-{trace}-{'d' * 16}-01"
        assert message["properties"]["correlation_id"] == new_id
        assert message["decoded_body"][:2] == [[], {"batch": 3}]

    def test_unregistered_tasks_are_skipped_and_reported_on_stderr(self, broker):
        """Entries whose task this code base does not register (or that have no task) are not published: each
        gets a line on stderr, they stay pending and the summary counts them as skipped."""
        queue = f"dlq-unregistered-{token()}"
        good = _entry(queue=queue)
        unknown = _entry(queue=queue, task_name="no.such.task")
        no_task = _entry(queue=queue, task_name="", reason="undecodable_message")

        out, err = dlq("replay", "--all")

        assert broker.depth(queue) == 1
        assert err.splitlines() == [
            f"Skipped dead letter {unknown.pk}: task no.such.task is not registered",
            f"Skipped dead letter {no_task.pk}: task (none) is not registered",
        ]
        assert out.endswith("Published 1 task(s); skipped 2.\n")
        assert dict(DeadLetter.objects.values_list("id", "status")) == {
            good.pk: "replayed", unknown.pk: "pending", no_task.pk: "pending",
        }  # fmt: skip

    def test_dry_run_prints_what_would_be_published_and_changes_nothing(self, broker):
        """``--dry-run`` prints the entries it would publish, with their task and queue; nothing is published,
        marked or recorded, and nothing is logged as replayed."""
        queue = f"dlq-dry-{token()}"
        entries = _entries(2, queue=queue)
        _entries(1, queue=queue, task_name="no.such.task")

        with capture_logs() as logs:
            out, err = dlq("replay", "--all", "--dry-run")

        assert out.splitlines() == [
            *(f"Would publish dead letter {entry.pk} ({REGISTERED}) to queue {queue}" for entry in entries),
            "Would publish 2 task(s); skipped 1. (task ids are assigned when published)",
        ]
        assert "is not registered" in err
        assert broker.depth(queue) == 0
        assert DeadLetter.objects.filter(status="pending").count() == 3
        assert not DeadLetterReplay.objects.exists()
        assert [e["event"] for e in logs if e["event"].startswith("dead_letter")] == ["dead_letters.replay_planned"]

    def test_dry_run_shows_what_the_real_run_then_does(self, broker):
        """A dry run names the same entries, in the same order, to the same queues as the replay that follows
        it (``--limit`` and ``--queue`` included); it prints no task id, since the real run draws new ones."""
        own, other = f"dlq-same-{token()}", f"dlq-other-{token()}"
        _entries(2, queue=own)
        _entries(1, queue=own, task_name="no.such.task")
        _entries(2, queue=own)
        for args in (["--limit", "3"], ["--queue", other]):
            planned, _ = dlq("replay", "--all", "--dry-run", *args)
            done, _ = dlq("replay", "--all", *args)

            assert " as task " not in planned
            assert [line.replace("Would publish", "Published") for line in planned.splitlines()[:-1]] == [
                re.sub(r" as task [0-9a-f-]{36}", "", line) for line in done.splitlines()[:-1]
            ]
        assert (broker.depth(own), broker.depth(other)) == (3, 1)

    def test_dry_run_names_the_routed_queue_for_an_entry_without_one(self):
        """An entry with no queue recorded is published where Celery routes its task (``CELERY_TASK_ROUTES``: a
        delivery batch to the deliveries queue): the dry run says where."""
        (entry,) = _entries(1, queue="")
        out, _ = dlq("replay", str(entry.pk), "--dry-run")
        assert out.splitlines()[0] == f"Would publish dead letter {entry.pk} ({REGISTERED}) to queue deliveries"

    def test_unknown_ids_refuse_the_whole_replay(self, broker):
        """An id no entry has is a command error naming it, before anything is published or marked, even when
        the other ids name pending entries; several unknown ids are named together."""
        queue = f"dlq-unknown-{token()}"
        (entry,) = _entries(1, queue=queue)

        with pytest.raises(CommandError, match=rf"^No dead letter with id {entry.pk + 1000}: see 'manage.py dlq list'"):
            dlq("replay", str(entry.pk), str(entry.pk + 1000))
        with pytest.raises(CommandError, match=rf"^No dead letters with ids {entry.pk + 1000}, {entry.pk + 1001}: "):
            dlq("replay", str(entry.pk + 1001), str(entry.pk + 1000))

        assert broker.depth(queue) == 0
        assert DeadLetter.objects.get().status == "pending"


class TestPurge:
    @pytest.fixture(autouse=True)
    def no_terminal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sys, "stdin", io.StringIO())

    def test_by_ids_with_yes_deletes_those_entries_and_their_history(self):
        """``dlq purge ID... --yes`` deletes the named entries (their replays with them) and no other."""
        gone, also_gone, kept = _entries(3)
        DeadLetterReplay.objects.create(dead_letter=gone, new_task_id="n", operator="alice", replayed_at=timezone.now())

        out, _ = dlq("purge", str(gone.pk), str(also_gone.pk), "--yes")

        assert out == "Deleted 2 dead letter(s).\n"
        assert list(DeadLetter.objects.values_list("id", flat=True)) == [kept.pk]
        assert not DeadLetterReplay.objects.exists()

    def test_older_than_and_status_select_and_combine(self):
        """``--older-than D`` deletes entries last failed longer than D ago, ``--status S`` those in S; given
        together, only entries matching both."""
        old_discarded = _entry(ago=timedelta(days=8), status="discarded")
        old_pending = _entry(ago=timedelta(days=8))
        _entry(ago=timedelta(days=6), status="discarded")
        new_pending = _entry(ago=timedelta(hours=1))

        assert dlq("purge", "--older-than", "7d", "--status", "discarded", "--yes")[0] == "Deleted 1 dead letter(s).\n"
        assert not DeadLetter.objects.filter(pk=old_discarded.pk).exists()
        assert dlq("purge", "--older-than", "1w", "--yes")[0] == "Deleted 1 dead letter(s).\n"
        assert not DeadLetter.objects.filter(pk=old_pending.pk).exists()
        assert dlq("purge", "--status", "discarded", "--yes")[0] == "Deleted 1 dead letter(s).\n"
        assert list(DeadLetter.objects.values_list("id", flat=True)) == [new_pending.pk]

    def test_purging_logs_the_counts_by_status(self):
        """A purge is never silent: it logs ``dead_letters.purged`` with who purged and counts by status."""
        hour_ago = timezone.now() - timedelta(hours=1)
        _entries(2, status="discarded", first_failed_at=hour_ago, last_failed_at=hour_ago)
        _entries(1, first_failed_at=hour_ago, last_failed_at=hour_ago)
        with capture_logs() as logs:
            dlq("purge", "--older-than", "30m", "--yes")
        (event,) = [e for e in logs if e["event"] == "dead_letters.purged"]
        assert (event["total"], event["discarded"], event["pending"]) == (3, 2, 1)
        assert event["reason"].startswith("manage.py dlq purge by ")

    def test_a_zero_older_than_selects_every_entry_failed_before_now(self):
        """``--older-than 0s`` is a selector like any other duration: every entry last failed before now."""
        _entries(2, last_failed_at=timezone.now() - timedelta(minutes=1))
        assert dlq("purge", "--older-than", "0s", "--yes")[0] == "Deleted 2 dead letter(s).\n"
        assert not DeadLetter.objects.exists()

    def test_dry_run_counts_and_deletes_nothing(self):
        """``--dry-run`` prints how many entries would go and deletes none, ``--yes`` or not."""
        _entries(2, status="discarded")
        _entries(1)
        assert dlq("purge", "--status", "discarded", "--dry-run")[0] == "Would delete 2 dead letter(s).\n"
        assert dlq("purge", "--status", "discarded", "--dry-run", "--yes")[0] == "Would delete 2 dead letter(s).\n"
        assert DeadLetter.objects.count() == 3

    def test_without_yes_and_without_a_terminal_it_refuses(self):
        """Without ``--yes`` and with no terminal to ask on, purge is a command error and deletes nothing."""
        entries = _entries(2)
        with pytest.raises(CommandError, match=r"Refusing to delete 2 dead letter\(s\) without --yes"):
            dlq("purge", *(str(e.pk) for e in entries))
        assert DeadLetter.objects.count() == 2

    @pytest.mark.parametrize(("answer", "remaining"), [("y", 0), ("YES ", 0), ("n", 1), ("", 1)])
    def test_on_a_terminal_it_asks_and_deletes_only_on_yes(self, monkeypatch, answer, remaining):
        """On a terminal, without ``--yes``, purge asks; ``y``/``yes`` deletes, anything else is a command
        error that deletes nothing."""
        prompts = []
        monkeypatch.setattr(sys, "stdin", Terminal())
        monkeypatch.setattr("builtins.input", lambda prompt: prompts.append(prompt) or answer)
        (entry,) = _entries(1)

        if remaining:
            with pytest.raises(CommandError, match=r"Nothing deleted\."):
                dlq("purge", str(entry.pk))
        else:
            assert dlq("purge", str(entry.pk))[0] == "Deleted 1 dead letter(s).\n"
        assert prompts == ["Delete 1 dead letter(s) for good? [y/N] "]
        assert DeadLetter.objects.count() == remaining

    def test_unknown_ids_refuse_the_whole_purge(self):
        """An id no entry has is a command error naming it, and nothing is deleted, ``--yes`` or not: not the
        other named entries either."""
        (entry,) = _entries(1)
        with pytest.raises(CommandError, match=rf"^No dead letter with id {entry.pk + 1000}: see 'manage.py dlq list'"):
            dlq("purge", str(entry.pk), str(entry.pk + 1000), "--yes")
        assert DeadLetter.objects.count() == 1

    def test_nothing_named_is_an_error(self):
        """Without IDs, ``--older-than`` or ``--status``, purge is a command error and deletes nothing, even
        with ``--yes``."""
        _entries(1)
        with pytest.raises(CommandError, match=r"Name what to purge: entry IDs, --older-than DURATION or --status"):
            dlq("purge", "--yes")
        assert DeadLetter.objects.count() == 1


class TestOutput:
    """What an operator sees: results on stdout, log lines on stderr, and never a JSON log line for a person."""

    @staticmethod
    def run(*args: str, stderr_on_terminal: bool = False) -> tuple[str, str, int]:
        """``python manage.py dlq ARGS`` in a process of its own, with the deployment's ``LOG_FORMAT=json``;
        stdout is a pipe, stderr a pipe or (``stderr_on_terminal``) a pseudo-terminal."""
        env = {**os.environ, "DATABASE_URL": _test_database_url(), "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
        command = [sys.executable, "manage.py", "dlq", *args]
        if not stderr_on_terminal:
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            return result.stdout, result.stderr, result.returncode
        primary, secondary = pty.openpty()
        with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=secondary) as process:
            os.close(secondary)
            out = process.stdout.read().decode() if process.stdout else ""
            err = b""
            while True:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: the process closed its end
                    break
                if not chunk:
                    break
                err += chunk
            returncode = process.wait(timeout=60)
        os.close(primary)
        return out, err.decode().replace("\r\n", "\n"), returncode

    @staticmethod
    def json_lines(text: str) -> list[str]:
        lines = []
        for line in text.splitlines():
            try:
                json.loads(line)
            except ValueError:
                continue
            lines.append(line)
        return lines

    @pytest.mark.django_db(transaction=True)
    def test_a_replay_prints_its_lines_on_stdout_and_logs_nothing_it_printed(self, broker):
        """A replay's stdout holds its lines and summary only; its stderr holds no JSON log line: the per-entry
        ``dead_letter.replayed`` event says what stdout says, so the command does not log it."""
        queue = f"dlq-out-{token()}"
        entries = _entries(2, queue=queue)

        out, err, code = self.run("replay", *(str(e.pk) for e in entries))

        assert code == 0, err
        assert [line.split(" (")[0] for line in out.splitlines()] == [
            *(f"Published dead letter {e.pk}" for e in entries), "Published 2 task(s); skipped 0.",
        ]  # fmt: skip
        assert self.json_lines(err) == []

    @pytest.mark.django_db(transaction=True)
    def test_on_a_terminal_log_lines_are_in_the_console_format_whatever_log_format_says(self):
        """With stderr on a terminal, the purge's ``dead_letters.purged`` warning is a console line, although
        ``LOG_FORMAT=json``; stdout holds the result line only."""
        (entry,) = _entries(1)

        out, err, code = self.run("purge", str(entry.pk), "--yes", stderr_on_terminal=True)

        assert code == 0, err
        assert out == "Deleted 1 dead letter(s).\n"
        assert "dead_letters.purged" in err
        assert "WARNING" in err
        assert self.json_lines(err) == []

    @pytest.mark.django_db(transaction=True)
    def test_json_output_is_pure_json(self):
        """``--json`` prints JSON and nothing else on stdout, one object per line."""
        _entries(2)
        out, err, code = self.run("list", "--json")
        assert code == 0, err
        assert len(out.splitlines()) == len(self.json_lines(out)) >= 2

    @pytest.mark.django_db(transaction=True)
    @pytest.mark.parametrize("subcommand", ["show", "replay", "purge"])
    def test_an_unknown_id_exits_1_with_one_line(self, subcommand):
        """``show``, ``replay`` and ``purge`` of an id no entry has exit 1 with one line on stderr and print
        nothing on stdout."""
        out, err, code = self.run(subcommand, "999999", *(["--yes"] if subcommand == "purge" else []))
        assert (out, err, code) == ("", "CommandError: No dead letter with id 999999: see 'manage.py dlq list'.\n", 1)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("list", "--since", "yesterday"), ("--since", "'yesterday'")),
        (("list", "--until", "2026-13-45T10:00:00"), ("--until", "'2026-13-45T10:00:00'")),
        (("list", "--limit", "0"), ("--limit", "'0'")),
        (("replay", "--all", "--limit", "-3"), ("--limit", "'-3'")),
        (("replay", "--all", "--rate", "-1"), ("--rate", "'-1'")),
        (("replay", "--all", "--rate", "nan"), ("--rate", "'nan'")),
        (("purge", "--older-than", "5x"), ("--older-than", "'5x'")),
        (("list", "--reason", "nonsense"), ("--reason", "'nonsense'")),
        (("purge", "--status", "gone"), ("--status", "'gone'")),
        (("show", "seven"), ("id", "'seven'")),
        (("frobnicate",), ("frobnicate",)),
        # Well-formed, but they would overflow a date, a timedelta, int(), a Postgres bigint or time.sleep().
        (("list", "--since", "1000000d"), ("--since", "'1000000d'", "too long")),
        (("list", "--until", "99999999999d"), ("--until", "'99999999999d'", "too long")),
        (("replay", "--since", "99999999999w"), ("--since", "'99999999999w'", "too long")),
        (("purge", "--older-than", "1000000d"), ("--older-than", "'1000000d'", "too long")),
        (("purge", "--older-than", "99999999999d"), ("--older-than", "'99999999999d'", "too long")),
        (("purge", "--older-than", "1" + "0" * 4400 + "s"), ("--older-than", "too long")),  # past int()'s limit
        (("list", "--limit", str(2**63)), ("--limit", f"'{2**63}'")),
        (("list", "--limit", "²"), ("--limit", "'²'", "whole number")),  # a digit to str.isdigit, not to int()
        (("replay", "--all", "--rate", "1e-300"), ("--rate", "'1e-300'")),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(args, names):
    """A value the command cannot use is refused by argument parsing: exit status 2 and a message on stderr
    naming the argument and the value, before anything is read or changed. Well-formed values out of range too:
    a duration reaching back before the year 1, a limit past Postgres' bigint, a rate under one a day."""
    result = subprocess.run(
        [sys.executable, "manage.py", "dlq", *args],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": _test_database_url()}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "error: argument" in result.stderr or "invalid choice" in result.stderr
    assert all(name in result.stderr for name in names), result.stderr
    assert "Traceback" not in result.stderr


class TestRetention:
    def test_purge_expired_dead_letters_deletes_only_entries_past_retention(self, settings):
        """The daily task deletes entries last failed more than ``DEAD_LETTER_RETENTION_DAYS`` ago, whatever
        their status, keeps younger ones, returns the counts by status and logs them as
        ``dead_letters.purged``."""
        settings.DEAD_LETTER_RETENTION_DAYS = 10
        _entry(ago=timedelta(days=11))
        _entry(ago=timedelta(days=12), status="discarded")
        _entry(ago=timedelta(days=40), status="discarded")
        _entry(ago=timedelta(days=11), status="replayed", first_failed_at=timezone.now() - timedelta(days=50))
        kept = [
            _entry(ago=timedelta(days=10) - timedelta(minutes=5)),
            _entry(ago=timedelta(days=3), status="discarded"),
            _entry(first_failed_at=timezone.now() - timedelta(days=60)),  # failed again since: its last failure counts
        ]

        with capture_logs() as logs:
            counts = purge_expired_dead_letters.run()

        assert counts == {"pending": 1, "discarded": 2, "replayed": 1}
        assert set(DeadLetter.objects.values_list("id", flat=True)) == {e.pk for e in kept}
        (event,) = [e for e in logs if e["event"] == "dead_letters.purged"]
        assert event == {
            "event": "dead_letters.purged", "log_level": "warning", "reason": "retention (10 days)", "total": 4,
            "pending": 1, "discarded": 2, "replayed": 1,
        }  # fmt: skip

    def test_nothing_expired_deletes_nothing_and_still_logs(self, settings):
        """With nothing past retention the task deletes nothing, returns no counts and logs a total of 0."""
        settings.DEAD_LETTER_RETENTION_DAYS = 30
        _entry(ago=timedelta(days=29))
        with capture_logs() as logs:
            assert purge_expired_dead_letters.run() == {}
        assert DeadLetter.objects.count() == 1
        assert [e["total"] for e in logs if e["event"] == "dead_letters.purged"] == [0]
