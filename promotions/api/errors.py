"""The API's exception handler (DRF's ``EXCEPTION_HANDLER``): every error a view raises becomes a JSON answer.

DRF's own handler already answers its exceptions (400, 401, 403, 404, 405, 415, 429) as JSON; this adds the
domain's: a ``django.core.exceptions.ValidationError`` from a service is a 400 by field, and a
``services.PromoConflictError`` a 409. Anything else is a bug and is left to Django - logged, sent to Sentry, and
answered by ``marketplace.errors.server_error`` (a JSON 500 under ``/api/``).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from promotions.services import PromoConflictError

__all__ = ["exception_handler"]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, PromoConflictError):
        return Response({"detail": str(exc), "status": exc.status}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, DjangoValidationError):
        exc = ValidationError(as_serializer_error(exc))
    return drf_exception_handler(exc, context)
