"""The error taxonomy: which failures a task retries and which it gives up on at once.

    Exception
    +-- TransientError            raise it to ask for a retry with backoff
    |   (also transient: SoftTimeLimitExceeded, connection and timeout errors of Redis, Postgres,
    |    SMTP, HTTP and the OS - the world may be better in a few seconds)
    +-- PermanentError            raise it to give up at once (bad input, a broken invariant)
    |   +-- MessageTooLargeError  a task message over CELERY_TASK_MAX_MESSAGE_BYTES (at publish or receipt)
        (also permanent: ValidationError, ObjectDoesNotExist, and every exception not listed as
         transient - a bug does not heal by retrying, and a retry loop hides it)

Transient errors retry with exponential backoff and jitter up to the task's ``max_retries``; permanent
errors are dead-lettered without a retry.
"""

from __future__ import annotations

import smtplib
import socket
from enum import StrEnum

import botocore.exceptions
import redis.exceptions
from billiard.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerOperationalError

__all__ = ["ErrorKind", "MessageTooLargeError", "PermanentError", "TransientError", "classify"]


class TransientError(Exception):
    """A failure that is expected to go away: retry the task later."""


class PermanentError(Exception):
    """A failure that no retry can fix: dead-letter the task now."""


class MessageTooLargeError(PermanentError):
    """A task message larger than ``CELERY_TASK_MAX_MESSAGE_BYTES``: refused at publish, dead-lettered at receipt."""


class ErrorKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    SoftTimeLimitExceeded,
    ConnectionError,  # builtin: refused, reset, aborted, broken pipe
    TimeoutError,
    socket.gaierror,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BrokerOperationalError,
    OperationalError,  # Postgres unreachable, server closed the connection, serialization failure
    InterfaceError,
    smtplib.SMTPServerDisconnected,
    smtplib.SMTPConnectError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
)


def classify(exc: BaseException) -> ErrorKind:
    """Return whether ``exc`` is worth retrying. Anything not known to be transient is permanent."""
    if isinstance(exc, PermanentError):
        return ErrorKind.PERMANENT
    if isinstance(exc, TRANSIENT_ERRORS):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT
