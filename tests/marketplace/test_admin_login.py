"""The admin's login is throttled (django-axes): after AXES_FAILURE_LIMIT wrong passwords for one username from
one address, that pair is locked out - the right password included - and the lockout is logged. The probe's
30 wrong passwords in 10 s were each answered, and the right one then worked."""

from __future__ import annotations

from typing import Any

import pytest
from axes.signals import user_locked_out
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

PASSWORD = "the-right-password-1"


def _login(client: Client, password: str, *, address: str = "203.0.113.7", forwarded_for: str = ""):
    extra: dict[str, Any] = {"REMOTE_ADDR": address}
    if forwarded_for:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return client.post(
        reverse("admin:login"), {"username": "ops", "password": password, "next": reverse("admin:index")}, **extra
    )


@pytest.fixture
def staff() -> User:
    return User.objects.create_user("ops", password=PASSWORD, is_staff=True, is_superuser=True)


def test_thirty_wrong_passwords_lock_the_account_out_for_that_address(staff, settings):
    """Given 30 wrong passwords in a row, then the answers turn 429 at the limit, the right password is refused
    too (no session), and a lockout line is logged."""
    client = Client()
    lockouts: list[dict[str, object]] = []
    receiver = lambda sender, **kwargs: lockouts.append(kwargs)  # noqa: E731
    user_locked_out.connect(receiver)
    try:
        statuses = [_login(client, f"wrong-{n}").status_code for n in range(30)]
    finally:
        user_locked_out.disconnect(receiver)

    assert statuses[: settings.AXES_FAILURE_LIMIT - 1] == [200] * (settings.AXES_FAILURE_LIMIT - 1)
    assert set(statuses[settings.AXES_FAILURE_LIMIT :]) == {429}
    right = _login(client, PASSWORD)
    assert right.status_code == 429
    assert "_auth_user_id" not in client.session
    # Axes logs each as "AXES: Locking out ..." (a warning, username and address masked).
    assert lockouts and lockouts[0]["username"] == "ops"


def test_a_few_mistakes_then_the_right_password_logs_in_and_resets_the_count(staff, settings):
    """Fewer failures than the limit do not lock anyone out; a success resets the count."""
    client = Client()
    for n in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, f"wrong-{n}").status_code == 200
    assert _login(client, PASSWORD).status_code == 302
    client.logout()
    for n in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, f"again-{n}").status_code == 200
    assert _login(client, PASSWORD).status_code == 302


def test_a_lockout_is_per_address(staff, settings):
    """Another address's login of the same user still works: one attacker cannot lock the operators out."""
    attacker = Client()
    for n in range(settings.AXES_FAILURE_LIMIT):
        _login(attacker, f"wrong-{n}")
    assert _login(attacker, PASSWORD).status_code == 429

    assert _login(Client(), PASSWORD, address="198.51.100.2").status_code == 302


def test_behind_a_proxy_each_client_is_counted_by_its_forwarded_address(staff, settings):
    """Given one proxy appending X-Forwarded-For (``API_NUM_PROXIES=1``), when one client behind it is locked out,
    then another client behind the same proxy still logs in: the count is not the proxy's address."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "10.0.0.2"
    attacker, colleague = Client(), Client()
    for n in range(settings.AXES_FAILURE_LIMIT):
        _login(attacker, f"wrong-{n}", address=proxy, forwarded_for="198.51.100.9")
    assert _login(attacker, PASSWORD, address=proxy, forwarded_for="198.51.100.9").status_code == 429

    assert _login(colleague, PASSWORD, address=proxy, forwarded_for="192.0.2.44").status_code == 302


def test_without_proxies_a_forged_forwarded_address_escapes_nothing(staff, settings):
    """With no proxy configured (the default), X-Forwarded-For is anyone's to write: it is ignored."""
    client = Client()
    for n in range(settings.AXES_FAILURE_LIMIT):
        _login(client, f"wrong-{n}", forwarded_for=f"198.51.100.{n}")
    assert _login(client, PASSWORD, forwarded_for="192.0.2.44").status_code == 429
