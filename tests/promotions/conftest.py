"""Fixtures of the promotions tests."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


@pytest.fixture
def staff_api(django_user_model) -> APIClient:
    """An API client with a staff user's bearer token."""
    user = django_user_model.objects.create_user(username="ops", password="x", is_staff=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    return client
