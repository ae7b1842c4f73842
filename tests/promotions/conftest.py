"""Fixtures of the promotions tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.contrib.auth.models import Permission
from knox.models import AuthToken
from rest_framework.test import APIClient

from tests.factories import API_PERMISSIONS, grant


@pytest.fixture
def staff_api(django_user_model) -> APIClient:
    """An API client with the bearer token of a staff user holding the API's permissions."""
    user = django_user_model.objects.create_user(username="ops", password="x", is_staff=True)
    grant(user, *API_PERMISSIONS)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {AuthToken.objects.create(user=user)[1]}")
    return client


@pytest.fixture(autouse=True)
def _fresh_throttles(redis_client: redis.Redis) -> Iterator[None]:
    """Every test starts with no throttle counted: the test client's requests all come from one address, and
    the windows outlast a test."""
    _clear_throttles(redis_client)
    yield
    _clear_throttles(redis_client)


def _clear_throttles(client: redis.Redis) -> None:
    keys = list(client.scan_iter(match="marketplace:*:throttle:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def operator_token(django_user_model) -> str:
    """The bearer token of a staff user holding every permission of the promotions app (all the API's writes)."""
    user = django_user_model.objects.create_user(username="operator", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="promotions"))
    return str(AuthToken.objects.create(user=user)[1])
