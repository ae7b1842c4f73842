"""Delivery channel backends: how a notification leaves the system.

``NOTIFICATION_BACKEND`` picks one: ``console`` (a log line, for the demo), ``email`` (Django's email
backend, SMTP in production) or ``sns`` (boto3; ``AWS_ENDPOINT_URL`` points it at LocalStack). A backend
gets a batch and yields each message's outcome as soon as it is known, so the caller records outcomes while
the batch goes on. One message's error never stops the batch: it becomes that message's failure (permanent
unless ``observability.errors`` knows it as transient). A provider's throttling answer (SNS ``Throttling``,
SMTP 421/451/452) is a transient failure marked ``throttled``: the caller pauses the whole channel and keeps the
message pending. Only ``SoftTimeLimitExceeded`` escapes, so the task stops at its soft time limit. Every message
carries its idempotency key so a provider can drop the duplicate that a redelivery after a crash may produce.
Failure texts never carry an email address (masked: they are logged and stored).
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from email.utils import make_msgid
from functools import cache
from typing import Protocol

import boto3
import botocore.exceptions
import structlog
from billiard.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.base import BaseEmailBackend

from observability.errors import ErrorKind, classify

__all__ = ["ChannelBackend", "DeliveryFailure", "Outcome", "OutgoingMessage", "get_backend", "mask_email"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OutgoingMessage:
    notification_id: int
    idempotency_key: str
    recipient: str
    subject: str
    body: str
    #: The subscription's one-click unsubscribe link (every notification has one; a confirmation request not):
    #: ``List-Unsubscribe`` + ``List-Unsubscribe-Post`` (RFC 8058) for email, a message attribute for SNS.
    unsubscribe_url: str = ""


@dataclass(frozen=True)
class DeliveryFailure:
    error: str
    #: True when retrying cannot help (a refused address): the notification fails at once.
    permanent: bool
    #: True when the provider asked us to slow down: the channel is paused, the message stays pending.
    throttled: bool = False


#: What one message's delivery came to: its notification id and its failure, None when it was sent.
Outcome = tuple[int, "DeliveryFailure | None"]


class ChannelBackend(Protocol):
    def send(self, messages: Iterable[OutgoingMessage]) -> Generator[Outcome, None, None]:
        """Deliver ``messages`` in order, yielding each one's outcome once it is known."""


def mask_email(address: str) -> str:
    """``jane@example.com`` -> ``j***@example.com``: enough to tell recipients apart in logs, not PII."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


_EMAIL_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


#: SNS error codes that mean "slow down" (the API reference's throttling errors).
SNS_THROTTLING_CODES = frozenset({"Throttling", "ThrottlingException"})
#: SMTP replies that mean "slow down / come back later" (RFC 5321: 421 service not available - closing,
#: 451 local error, 452 insufficient storage; relays such as SES and Postfix rate limits answer with these).
SMTP_THROTTLING_CODES = frozenset({421, 451, 452})


def _smtp_throttled(exc: Exception) -> bool:
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code in SMTP_THROTTLING_CODES
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return any(code in SMTP_THROTTLING_CODES for code, _ in exc.recipients.values())
    return False


def _failure(
    exc: Exception, *, permanent: bool | None = None, where: str = "", throttled: bool = False
) -> DeliveryFailure:
    """``exc`` as a stored failure text, prefixed with the endpoint ``where`` it happened, addresses masked."""
    # Provider errors echo addresses (smtplib's SMTPRecipientsRefused is the refused recipients' dict).
    prefix = f"{where}: " if where else ""
    text = _EMAIL_ADDRESS.sub(lambda match: mask_email(match.group()), f"{prefix}{type(exc).__name__}: {exc}")
    if throttled:
        return DeliveryFailure(text[:500], permanent=False, throttled=True)
    return DeliveryFailure(text[:500], classify(exc) is ErrorKind.PERMANENT if permanent is None else permanent)


def _single_message_failure(exc: Exception, *, where: str = "") -> DeliveryFailure:
    """The failure of one message whose send raised ``exc``; re-raises the soft time limit, which must stop the
    batch (caught here, the task would run on into its hard limit and be killed with outcomes unrecorded)."""
    if isinstance(exc, SoftTimeLimitExceeded):
        raise exc
    return _failure(exc, where=where)


class ConsoleBackend:
    """Logs each delivery; the demo's channel."""

    def send(self, messages: Iterable[OutgoingMessage]) -> Generator[Outcome, None, None]:
        for message in messages:
            log.debug(  # per message: the batch's line counts them
                "notification.delivered",
                notification_id=message.notification_id,
                recipient_masked=mask_email(message.recipient),
                subject=message.subject,
                idempotency_key=message.idempotency_key,
            )
            yield message.notification_id, None


def _closed_by_server(connection: BaseEmailBackend) -> bool:
    # Django's SMTP backend keeps its smtplib.SMTP after smtplib closed the socket (on a 421 answer).
    smtp = getattr(connection, "connection", None)
    return smtp is not None and getattr(smtp, "sock", True) is None


class EmailBackend:
    """Sends through Django's email backend over one connection per batch, opened again when the server closed it
    (smtplib closes it on a 421 answer; the next message of a paced batch goes out on a new one)."""

    def send(self, messages: Iterable[OutgoingMessage]) -> Generator[Outcome, None, None]:
        try:
            connection = get_connection(fail_silently=False)
            connection.open()
        except (OSError, smtplib.SMTPException) as exc:
            # The endpoint named: "Connection refused" alone does not say which server an operator must check.
            failure = _failure(exc, where=f"SMTP {settings.EMAIL_HOST}:{settings.EMAIL_PORT}")
            for message in messages:
                yield message.notification_id, failure
            return
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
                        **_unsubscribe_headers(message),
                    },
                )
                try:
                    if _closed_by_server(connection):
                        # Closed by the server (a 421): opened again here, or Django would open and close one
                        # connection per message from now on.
                        connection.close()
                        connection.open()
                    email.send()
                except smtplib.SMTPRecipientsRefused as exc:
                    throttled = _smtp_throttled(exc)
                    yield message.notification_id, _failure(exc, permanent=not throttled, throttled=throttled)
                except Exception as exc:  # noqa: BLE001 - one message's error (a header Django refuses) is its failure
                    # The server named where it is at fault (a dropped connection), not for a header Django refuses.
                    at_server = isinstance(exc, OSError | smtplib.SMTPException)
                    where = f"SMTP {settings.EMAIL_HOST}:{settings.EMAIL_PORT}" if at_server else ""
                    if _smtp_throttled(exc):
                        yield message.notification_id, _failure(exc, where=where, throttled=True)
                    else:
                        yield message.notification_id, _single_message_failure(exc, where=where)
                else:
                    yield message.notification_id, None
        finally:
            connection.close()


def _unsubscribe_headers(message: OutgoingMessage) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe: mail clients show an "Unsubscribe" button that POSTs
    ``List-Unsubscribe=One-Click`` to the link; Gmail and Yahoo require it of bulk senders."""
    if not message.unsubscribe_url:
        return {}
    return {"List-Unsubscribe": f"<{message.unsubscribe_url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


#: SNS takes subjects "less than 100 characters long" (its API reference).
_SNS_SUBJECT_MAX = 99


class SnsBackend:
    """Publishes each notification to ``SNS_TOPIC_ARN``; subscribers of the topic fan it out to people."""

    def __init__(self) -> None:
        self._client = boto3.client(
            "sns", region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL or None
        )
        self._where = f"SNS {settings.AWS_REGION} {settings.AWS_ENDPOINT_URL or 'AWS'}"

    def send(self, messages: Iterable[OutgoingMessage]) -> Generator[Outcome, None, None]:
        for message in messages:
            try:
                self._client.publish(
                    TopicArn=settings.SNS_TOPIC_ARN,
                    Subject=message.subject[:_SNS_SUBJECT_MAX],
                    Message=message.body,
                    MessageAttributes={
                        "recipient": {"DataType": "String", "StringValue": message.recipient},
                        "idempotency_key": {"DataType": "String", "StringValue": message.idempotency_key},
                        # The topic's subscribers (an SMS or mail relay) put it in what they deliver.
                        **(
                            {"unsubscribe_url": {"DataType": "String", "StringValue": message.unsubscribe_url}}
                            if message.unsubscribe_url
                            else {}
                        ),
                    },
                )
            except botocore.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                transient = code in SNS_THROTTLING_CODES | {"InternalError", "ServiceUnavailable"}
                yield (
                    message.notification_id,
                    _failure(exc, permanent=not transient, throttled=code in SNS_THROTTLING_CODES),
                )
            except Exception as exc:  # noqa: BLE001 - one message's error (unreachable endpoint) is its failure
                yield message.notification_id, _single_message_failure(exc, where=self._where)
            else:
                yield message.notification_id, None


_BACKENDS: dict[str, type[ChannelBackend]] = {
    "console": ConsoleBackend,
    "email": EmailBackend,
    "sns": SnsBackend,
}


@cache
def get_backend(name: str) -> ChannelBackend:
    """The backend named ``name``, built once per process (boto3 clients are costly to create)."""
    return _BACKENDS[name]()
