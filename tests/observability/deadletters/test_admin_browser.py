"""The dead-letter admin in a real headless browser (Debian's Chromium driven by Playwright): list,
filter, replay one; the replay action exists only for users with the explicit permission."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from observability.deadletters.admin import MESSAGE_WIDTH
from observability.deadletters.models import DeadLetter, DeadLetterReplay

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="Debian's chromium is not installed (make test installs it)"
    ),
]
PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, which Django's ORM takes for an
    # async context; the ORM calls here are plain synchronous test code.
    patch = pytest.MonkeyPatch()
    patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield browser
        browser.close()
    patch.undo()


def _operator(*, can_replay: bool) -> User:
    user = User.objects.create_user(f"op-{uuid.uuid4().hex[:6]}", password=PASSWORD, is_staff=True)
    codenames = ["view_deadletter", "change_deadletter"] + (["replay_deadletter"] if can_replay else [])
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def _entry(reason: str, queue: str) -> DeadLetter:
    now = timezone.now()
    return DeadLetter.objects.create(
        dedup_key=uuid.uuid4().hex, task_id=uuid.uuid4().hex, reason=reason,
        task_name="promotions.tasks.deliver_notification_batch",
        args=[], queue=queue, routing_key=queue, fingerprint="a" * 16,
        exception_type="observability.errors.PermanentError", exception_message="boom",
        traceback="Traceback (most recent call last):\n  boom", first_failed_at=now, last_failed_at=now,
    )  # fmt: skip


def _login(browser, live_server, user: User):
    page = browser.new_page()
    page.goto(f"{live_server.url}/admin/login/?next=/admin/observability/deadletter/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    return page


def test_an_operator_lists_filters_and_replays_one_entry(browser, live_server, broker):
    """List shows every entry; the reason filter narrows it; "replay" publishes the selected one."""
    queue = f"admin-{uuid.uuid4().hex[:8]}"
    wanted = _entry("non_retryable_error", queue)
    _entry("max_retries_exceeded", queue)
    page = _login(browser, live_server, _operator(can_replay=True))

    assert page.locator("#result_list tbody tr").count() == 2
    page.click("#changelist-filter a[href*='reason__exact=non_retryable_error']")
    page.wait_for_url("**reason__exact=non_retryable_error**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    rows.first.locator("input.action-select").check()
    page.select_option("select[name=action]", "replay")
    page.click("button[name=index]")

    page.wait_for_selector(".messagelist")
    assert "Replayed 1 dead letter(s)." in page.inner_text(".messagelist")
    wanted.refresh_from_db()
    assert wanted.status == "replayed"
    assert DeadLetterReplay.objects.get(dead_letter=wanted).operator.startswith("op-")
    assert broker.depth(queue) == 1

    page.goto(f"{live_server.url}/admin/observability/deadletter/{wanted.pk}/change/")
    assert "Traceback (most recent call last)" in page.content()


def test_without_the_permission_there_is_no_replay_action(browser, live_server):
    """A staff user who may view dead letters but lacks ``replay_deadletter`` gets no replay/discard."""
    _entry("non_retryable_error", "celery")
    page = _login(browser, live_server, _operator(can_replay=False))

    options = page.locator("select[name=action] option").all_inner_texts()
    assert not any("Replay" in o or "Discard" in o for o in options)


def test_at_1400_px_the_list_shows_what_on_call_needs_uncut(browser, live_server):
    """At 1400 px the list shows, for each entry, the last failure to the second in UTC, the reason, the task,
    the exception's class, its message's first line cut with an ellipsis (the full text in the cell's title)
    and the failure count - the table no wider than the window, so no column is cut off."""
    entry = _entry("non_retryable_error", "celery")
    DeadLetter.objects.filter(pk=entry.pk).update(
        exception_type="django.db.utils.DataError",
        exception_message='invalid input syntax for type bigint: "12O" ' + "x" * 100 + "\nLINE 6: ...",
        failure_count=3,
        last_failed_at=datetime(2026, 12, 1, 23, 44, 35, 123456, tzinfo=UTC),
    )
    page = _login(browser, live_server, _operator(can_replay=False))
    page.set_viewport_size({"width": 1400, "height": 900})

    headers = page.locator("#result_list thead th .text").all_inner_texts()
    assert [h.strip().lower() for h in headers if h.strip()] == [
        "id", "last failed (utc)", "status", "reason", "task name", "exception", "message", "failure count",
    ]  # fmt: skip
    row = page.locator("#result_list tbody tr").first
    cells = [c.strip() for c in row.locator("xpath=./*[not(contains(@class, 'action-checkbox'))]").all_inner_texts()]
    assert cells[:6] == [
        str(entry.pk), "2026-12-01 23:44:35 UTC", entry.get_status_display(), entry.get_reason_display(),
        "promotions.tasks.deliver_notification_batch", "DataError",
    ]  # fmt: skip
    assert cells[6].startswith('invalid input syntax for type bigint: "12O" xxx')
    assert cells[6].endswith("\u2026") and len(cells[6]) == MESSAGE_WIDTH
    assert cells[7] == "3"
    assert row.locator("td.field-message span").get_attribute("title").endswith("\nLINE 6: ...")
    assert row.locator("td.field-exception span").get_attribute("title") == "django.db.utils.DataError"
    width = page.evaluate("document.querySelector('#result_list').getBoundingClientRect().right")
    assert width <= 1400
