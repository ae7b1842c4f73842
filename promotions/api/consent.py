"""The public links of consent: confirming a subscription and unsubscribing (``promotions.consent``).

Both are GET links a person clicks in a message; unsubscribing also takes RFC 8058's one-click ``POST`` (body
``List-Unsubscribe=One-Click``, sent by mail clients from the ``List-Unsubscribe`` header, without cookies or
credentials). A GET on the unsubscribe link unsubscribes at once too: the API answers JSON only, so there is
no page to hold a confirm button, and a link scanner that follows it errs towards mailing less. Both are
idempotent. A tampered, expired or superseded link is 400 ``{"detail": ...}`` and changes nothing.
"""

from __future__ import annotations

from django.utils import timezone
from rest_framework.exceptions import APIException
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from promotions import consent

__all__ = ["ConfirmView", "UnsubscribeView"]


class InvalidLink(APIException):
    status_code = 400
    default_code = "invalid_link"


class ConfirmView(APIView):
    """``GET /api/subscriptions/confirm/{token}``: the link of a confirmation request."""

    authentication_classes: list[type] = []  # the signed token is the credential
    permission_classes = [AllowAny]

    def get(self, request: Request, token: str) -> Response:
        try:
            consent.subscription_confirm(token=token, now=timezone.now())
        except consent.InvalidLinkError as exc:
            raise InvalidLink(str(exc)) from None
        return Response({"detail": "Subscription confirmed: you will be told of this product's flash promos."})


class UnsubscribeView(APIView):
    """``GET`` or ``POST /api/subscriptions/unsubscribe/{token}``: the link in every notification. The body of
    a POST is not read: any POST to the signed link unsubscribes (RFC 8058 prescribes what clients send, and
    the token alone identifies the subscription)."""

    authentication_classes: list[type] = []  # RFC 8058: the request carries no credentials
    permission_classes = [AllowAny]

    def get(self, request: Request, token: str) -> Response:
        return self._unsubscribe(token)

    def post(self, request: Request, token: str) -> Response:
        return self._unsubscribe(token)

    def _unsubscribe(self, token: str) -> Response:
        try:
            consent.subscription_unsubscribe(token=token, now=timezone.now())
        except consent.InvalidLinkError as exc:
            raise InvalidLink(str(exc)) from None
        return Response({"detail": "Unsubscribed: nothing more about this product is sent to this address."})
