"""API tokens move from DRF's authtoken (keys stored in clear, never expiring) to django-rest-knox: each key
is kept as its SHA-512 digest - the same token goes on working - and expires ``API_TOKEN_TTL_DAYS`` from now;
the clear keys are deleted. Raw SQL: ``rest_framework.authtoken`` is no longer installed, and a database that
never had its table has nothing to move. Reversed, it does nothing: the clear keys are gone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import migrations
from django.utils import timezone

_LEGACY_TABLE = "authtoken_token"


def _move_tokens(apps: Any, schema_editor: Any) -> None:
    from knox.crypto import hash_token
    from knox.settings import CONSTANTS

    connection = schema_editor.connection
    if _LEGACY_TABLE not in connection.introspection.table_names():
        return
    auth_token = apps.get_model("knox", "AuthToken")
    expiry = timezone.now() + timedelta(days=settings.API_TOKEN_TTL_DAYS)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id FROM {_LEGACY_TABLE}")
        rows = cursor.fetchall()
        auth_token.objects.bulk_create(
            auth_token(digest=hash_token(key), token_key=key[: CONSTANTS.TOKEN_KEY_LENGTH], user_id=user_id,
                       expiry=expiry)
            for key, user_id in rows
        )  # fmt: skip
        cursor.execute(f"DELETE FROM {_LEGACY_TABLE}")


class Migration(migrations.Migration):
    dependencies = [
        ("promotions", "0006_subscription_product_walk"),
        ("knox", "0009_extend_authtoken_field"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(_move_tokens, migrations.RunPython.noop, elidable=False)]
