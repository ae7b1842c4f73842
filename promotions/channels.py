"""Delivery channel backends: how a notification leaves the system.

``NOTIFICATION_BACKEND`` picks one: ``console`` (a log line, for the demo), ``email`` (Django's email
backend, SMTP in production) or ``sns`` (boto3; ``AWS_ENDPOINT_URL`` points it at LocalStack). A backend
gets a batch and returns the failures by notification id; every message carries its idempotency key so a
provider can drop the duplicate that a redelivery after a crash may produce.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import make_msgid
from functools import cache
from typing import Protocol

import boto3
import botocore.exceptions
import structlog
from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from observability.errors import ErrorKind, classify

__all__ = ["ChannelBackend", "DeliveryFailure", "OutgoingMessage", "get_backend", "mask_email"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    notification_id: int
    idempotency_key: str
    recipient: str
    subject: str
    body: str


@dataclass(frozen=True)
class DeliveryFailure:
    error: str
    #: True when retrying cannot help (a refused address): the notification fails at once.
    permanent: bool


class ChannelBackend(Protocol):
    def send(self, messages: Sequence[OutgoingMessage]) -> dict[int, DeliveryFailure]:
        """Deliver ``messages``; return the failures keyed by notification id."""


def mask_email(address: str) -> str:
    """``jane@example.com`` -> ``j***@example.com``: enough to tell recipients apart in logs, not PII."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


def _failure(exc: Exception) -> DeliveryFailure:
    return DeliveryFailure(f"{type(exc).__name__}: {exc}"[:500], classify(exc) is ErrorKind.PERMANENT)


class ConsoleBackend:
    """Logs each delivery; the demo's channel."""

    def send(self, messages: Sequence[OutgoingMessage]) -> dict[int, DeliveryFailure]:
        for message in messages:
            log.info(
                "notification.delivered",
                notification_id=message.notification_id,
                recipient_masked=mask_email(message.recipient),
                subject=message.subject,
                idempotency_key=message.idempotency_key,
            )
        return {}


class EmailBackend:
    """Sends through Django's email backend over one connection per batch."""

    def send(self, messages: Sequence[OutgoingMessage]) -> dict[int, DeliveryFailure]:
        failures: dict[int, DeliveryFailure] = {}
        try:
            connection = get_connection(fail_silently=False)
            connection.open()
        except (OSError, smtplib.SMTPException) as exc:
            return dict.fromkeys((m.notification_id for m in messages), _failure(exc))
        try:
            for message in messages:
                email = EmailMessage(
                    subject=message.subject,
                    body=message.body,
                    to=[message.recipient],
                    connection=connection,
                    headers={
                        "Message-ID": make_msgid(idstring=message.idempotency_key, domain="marketplace.local"),
                        "X-Idempotency-Key": message.idempotency_key,
                    },
                )
                try:
                    email.send()
                except smtplib.SMTPRecipientsRefused as exc:
                    failures[message.notification_id] = DeliveryFailure(f"recipient refused: {exc}"[:500], True)
                except (OSError, smtplib.SMTPException) as exc:
                    failures[message.notification_id] = _failure(exc)
        finally:
            connection.close()
        return failures


class SnsBackend:
    """Publishes each notification to ``SNS_TOPIC_ARN``; subscribers of the topic fan it out to people."""

    def __init__(self) -> None:
        self._client = boto3.client(
            "sns", region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL or None
        )

    def send(self, messages: Sequence[OutgoingMessage]) -> dict[int, DeliveryFailure]:
        failures: dict[int, DeliveryFailure] = {}
        for message in messages:
            try:
                self._client.publish(
                    TopicArn=settings.SNS_TOPIC_ARN,
                    Subject=message.subject[:100],
                    Message=message.body,
                    MessageAttributes={
                        "recipient": {"DataType": "String", "StringValue": message.recipient},
                        "idempotency_key": {"DataType": "String", "StringValue": message.idempotency_key},
                    },
                )
            except botocore.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                throttled = code in {
                    "Throttling",
                    "ThrottlingException",
                    "InternalError",
                    "ServiceUnavailable",
                }
                failures[message.notification_id] = DeliveryFailure(f"{code}: {exc}"[:500], not throttled)
            except botocore.exceptions.BotoCoreError as exc:
                failures[message.notification_id] = _failure(exc)
        return failures


_BACKENDS: dict[str, type[ChannelBackend]] = {
    "console": ConsoleBackend,
    "email": EmailBackend,
    "sns": SnsBackend,
}


@cache
def get_backend(name: str) -> ChannelBackend:
    """The backend named ``name``, built once per process (boto3 clients are costly to create)."""
    return _BACKENDS[name]()
