"""Deleting dead letters in the admin needs ``observability.purge_deadletter`` and goes through the purge
service - counted and logged - never Django's plain bulk delete."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from structlog.testing import capture_logs

from observability.deadletters.models import DeadLetter

pytestmark = pytest.mark.django_db


def _entries(count: int) -> list[int]:
    now = timezone.now()
    return [
        DeadLetter.objects.create(
            dedup_key=uuid.uuid4().hex, task_id=uuid.uuid4().hex, task_name="promotions.tasks.x",
            reason="non_retryable_error", fingerprint="f" * 16, first_failed_at=now, last_failed_at=now,
        ).pk
        for _ in range(count)
    ]  # fmt: skip


def _client(*codenames: str) -> Client:
    user = User.objects.create_user(uuid.uuid4().hex[:12], password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="observability", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def _delete_selected(client: Client, ids: list[int]):
    return client.post(
        reverse("admin:observability_deadletter_changelist"),
        {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
    )


def test_djangos_delete_permission_alone_deletes_nothing():
    """Given a staff user holding only view and Django's delete permission, then neither "Delete selected"
    nor the detail page's delete removes an entry."""
    ids = _entries(2)
    client = _client("view_deadletter", "delete_deadletter")

    _delete_selected(client, ids)
    detail = client.post(reverse("admin:observability_deadletter_delete", args=[ids[0]]), {"post": "yes"})

    assert detail.status_code == 403
    assert DeadLetter.objects.count() == 2


def test_the_purge_permission_deletes_through_the_purge_service():
    """Given a user holding ``purge_deadletter``, then "Delete selected" and the detail page's delete remove the
    entries through ``dead_letters_purge``: each deletion is one ``dead_letters.purged`` line with its counts."""
    ids = _entries(3)
    client = _client("view_deadletter", "purge_deadletter")

    with capture_logs() as logs:
        _delete_selected(client, ids[:2])
        client.post(reverse("admin:observability_deadletter_delete", args=[ids[2]]), {"post": "yes"})

    assert DeadLetter.objects.count() == 0
    purged = [line for line in logs if line["event"] == "dead_letters.purged"]
    assert [(line["total"], line["pending"]) for line in purged] == [(2, 2), (1, 1)]
    assert all(line["reason"].startswith("admin, by ") for line in purged)
