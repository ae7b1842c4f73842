"""The demo's management commands as ``make run`` calls them at every start: ``seed_demo`` loads the demo data
once, ``demo_admin`` makes the password in the password file the one that logs in to the admin."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command

from promotions.models import FlashPromo, Product, Subscription

pytestmark = pytest.mark.django_db

SMALL = ["--subscribers", "2", "--promos", "2"]


def _run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- seed_demo ---------------------------------------------------------------------------------------------


def test_seed_demo_runs_once_and_says_so_in_one_line_after():
    """Given the demo data loaded, when ``seed_demo`` runs again, then it creates nothing and prints one line
    saying the demo data is there and how to add a wave."""
    _run("seed_demo", *SMALL)
    counts = (Product.objects.count(), Subscription.objects.count(), FlashPromo.objects.count())

    output = _run("seed_demo", *SMALL)

    assert (Product.objects.count(), Subscription.objects.count(), FlashPromo.objects.count()) == counts
    assert output.splitlines() == [
        "demo data already there (3 demo products): nothing created; --again adds a new wave."
    ]


def test_seed_demo_first_run_creates_the_demo_data():
    """Given an empty database, when ``seed_demo`` runs, then it creates 3 products, their subscribers and
    the promos."""
    _run("seed_demo", *SMALL)

    assert Product.objects.count() == 3
    assert Subscription.objects.count() == 6
    assert FlashPromo.objects.count() == 2


def test_seed_demo_again_adds_a_new_wave():
    """Given the demo data loaded, when ``seed_demo --again`` runs, then a new wave of promos is created."""
    _run("seed_demo", *SMALL)

    _run("seed_demo", *SMALL, "--again")

    assert FlashPromo.objects.count() == 4


def test_seed_demo_dry_run_writes_nothing():
    """Given an empty database, when ``seed_demo --dry-run`` runs, then it says what it would create and
    creates nothing."""
    output = _run("seed_demo", *SMALL, "--dry-run")

    assert output.startswith("would create 3 products")
    assert Product.objects.count() == 0


# --- demo_admin --------------------------------------------------------------------------------------------


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "admin-password"
    path.write_text("first-Pa55word\n")
    return path


def test_demo_admin_creates_the_superuser_with_the_file_password(password_file):
    """Given no admin user, when ``demo_admin`` runs, then a superuser ``admin`` exists whose password is the
    file's first line."""
    output = _run("demo_admin", "--password-file", str(password_file))

    user = authenticate(username="admin", password="first-Pa55word")
    assert user is not None
    assert user.is_superuser
    assert user.is_staff
    assert output.startswith("created superuser 'admin'")


def test_demo_admin_sets_the_password_of_an_existing_admin(password_file):
    """Given an admin created with another password (the database kept, var/admin-password deleted by
    ``make clean`` and written anew), when ``demo_admin`` runs, then the new file's password logs in and the
    old one does not."""
    get_user_model().objects.create_superuser(username="admin", email="admin@example.com", password="old-one")

    output = _run("demo_admin", "--password-file", str(password_file))

    assert authenticate(username="admin", password="first-Pa55word") is not None
    assert authenticate(username="admin", password="old-one") is None
    assert get_user_model().objects.filter(username="admin").count() == 1
    assert output.startswith("set the password of superuser 'admin'")


def test_demo_admin_dry_run_changes_nothing(password_file):
    """Given an existing admin, when ``demo_admin --dry-run`` runs, then its password stays."""
    get_user_model().objects.create_superuser(username="admin", email="admin@example.com", password="old-one")

    output = _run("demo_admin", "--password-file", str(password_file), "--dry-run")

    assert authenticate(username="admin", password="old-one") is not None
    assert output.startswith("would set the password of superuser 'admin'")


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_demo_admin_refuses_a_missing_or_empty_password_file(tmp_path, content):
    """Given no password file, or an empty one, when ``demo_admin`` runs, then it fails with a CommandError
    naming the file, and no user is created."""
    path = tmp_path / "admin-password"
    if content is not None:
        path.write_text(content)

    with pytest.raises(CommandError, match="admin-password"):
        _run("demo_admin", "--password-file", str(path))

    assert not get_user_model().objects.exists()
