"""Consent: subscriptions get ``confirmed_at``, ``unsubscribed_at`` and ``confirmation_sent_at``.

Existing subscriptions are NOT confirmed: every row stays with ``confirmed_at`` NULL, so from this migration on
they get no promo notification. They were taken without a confirmation (anyone could subscribe any address),
and a mail provider suspends a sender that mails an unconfirmed list. An operator asks them to confirm -
``manage.py subscriptions request-confirmation`` or the admin's "Send a confirmation request" action, both
bounded like the API (one request per address per ``SUBSCRIPTION_CONFIRM_RESEND_INTERVAL_SECONDS``); those who
click the link are notified again. The columns are added NULL (no table rewrite) and the index concurrently
(hence not atomic), so a large subscription table stays writable while this runs.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("promotions", "0007_api_tokens_hashed"),
    ]

    operations = [
        migrations.AddField(
            model_name="subscription",
            name="confirmation_sent_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="subscription",
            name="confirmed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="subscription",
            name="unsubscribed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        AddIndexConcurrently(
            model_name="subscription",
            index=models.Index(fields=["email"], name="subscription_email"),
        ),
    ]
