"""Fixtures of the promotions tests."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.factories import API_PERMISSIONS, grant


@pytest.fixture
def staff_api(django_user_model) -> APIClient:
    """An API client with the bearer token of a staff user holding the API's permissions."""
    user = django_user_model.objects.create_user(username="ops", password="x", is_staff=True)
    grant(user, *API_PERMISSIONS)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")
    return client
