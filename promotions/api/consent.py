"""The public links of consent: confirming a subscription and unsubscribing (``promotions.consent``).

Both links are mailed; mail scanners and anti-spam gateways open links in received mail before any person
does, so a ``GET`` (or ``HEAD``) changes nothing: it answers a small HTML page saying what its one button will
do, a form that POSTs to the same address. The ``POST`` acts, idempotently - and for unsubscribing it is also
RFC 8058's one-click request (body ``List-Unsubscribe=One-Click``, form-encoded, sent by mail clients from the
``List-Unsubscribe`` header without cookies or credentials; the body is not read: the token alone identifies the
subscription). A POST answers a small HTML page to a browser (``Accept: text/html`` preferred) and
``{"detail": ...}`` to anything else. A tampered, expired or superseded link is 400 with the reason, on GET or
POST, and changes nothing.

Plain Django views, not DRF's: the API's DRF settings render JSON and parse JSON only, and these answer HTML and
take form posts. Every other answer under ``/api/`` stays JSON (a 405 included).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from promotions import consent

__all__ = ["ConfirmView", "UnsubscribeView"]

#: The pages load nothing and post only to themselves; nobody may frame them (a hidden button to click).
CONTENT_SECURITY_POLICY = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
_INVALID_TITLE = "This link does not work"


def _page(request: HttpRequest, template: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
    response = render(request, f"promotions/consent/{template}", context, status=status)
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    # The address holds the token: no Referer carries it anywhere, no cache keeps the page.
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "no-store"
    return response


def _answer(request: HttpRequest, *, title: str, detail: str, status: int = 200) -> HttpResponse:
    """A browser's form post gets a page; an API client, a mail client's one-click POST (``*/*`` or no
    ``Accept``) gets JSON."""
    if request.get_preferred_type(["application/json", "text/html"]) == "text/html":
        return _page(request, "result.html", {"title": title, "detail": detail}, status)
    response = JsonResponse({"detail": detail}, status=status)
    response["Cache-Control"] = "no-store"
    return response


# CSRF exempt: the form carries no CSRF token, and RFC 8058's one-click POST comes from a mail client with no
# cookie at all. The authorisation is the signed token in the address, which only the mailbox it was sent to
# holds; a forged cross-site POST would need that token, and with it a GET shows the same button anyway.
@method_decorator(csrf_exempt, name="dispatch")
class _LinkView(View):
    http_method_names = ["get", "head", "post", "options"]

    def get(self, request: HttpRequest, token: str) -> HttpResponse:
        # HEAD is served by this too (Django's View), its body dropped: a prefetch changes nothing either way.
        try:
            context = self.describe(token)
        except consent.InvalidLinkError as exc:
            return _answer(request, title=_INVALID_TITLE, detail=str(exc), status=400)
        return _page(request, "link.html", context)

    def post(self, request: HttpRequest, token: str) -> HttpResponse:
        try:
            title, detail = self.act(token)
        except consent.InvalidLinkError as exc:
            return _answer(request, title=_INVALID_TITLE, detail=str(exc), status=400)
        return _answer(request, title=title, detail=detail)

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = JsonResponse({"detail": f'Method "{request.method}" not allowed.'}, status=405)
        response["Allow"] = ", ".join(name.upper() for name in self.http_method_names if hasattr(self, name))
        return response

    def describe(self, token: str) -> dict[str, Any]:
        """The page's context for a valid link, read only; raises ``consent.InvalidLinkError``."""
        raise NotImplementedError

    def act(self, token: str) -> tuple[str, str]:
        """Do what the link is for; the answer's title and detail. Raises ``consent.InvalidLinkError``."""
        raise NotImplementedError


class ConfirmView(_LinkView):
    """``GET``/``POST /api/subscriptions/confirm/{token}``: the link of a confirmation request."""

    def describe(self, token: str) -> dict[str, Any]:
        subscription = consent.subscription_of_confirm_link(token=token)
        product = subscription.product.name
        return {
            "title": "Confirm your subscription",
            "explanation": (
                f"This address is already told of flash promos on {product}: pressing the button changes nothing."
                if subscription.notifiable
                else f"Press the button to be told of flash promos on {product} at this address."
            ),
            "button": "Confirm my subscription",
            "one_click": False,
        }

    def act(self, token: str) -> tuple[str, str]:
        consent.subscription_confirm(token=token, now=timezone.now())
        return "Subscription confirmed", "Subscription confirmed: you will be told of this product's flash promos."


class UnsubscribeView(_LinkView):
    """``GET``/``POST /api/subscriptions/unsubscribe/{token}``: the link in every notification, and the
    ``List-Unsubscribe`` target of RFC 8058's one-click POST."""

    def describe(self, token: str) -> dict[str, Any]:
        subscription = consent.subscription_of_unsubscribe_link(token=token)
        if subscription is not None and subscription.unsubscribed_at is None:
            explanation = f"Press the button to stop every message about {subscription.product.name} to this address."
        else:
            explanation = "This address is already unsubscribed: pressing the button changes nothing."
        return {"title": "Unsubscribe", "explanation": explanation, "button": "Unsubscribe", "one_click": True}

    def act(self, token: str) -> tuple[str, str]:
        consent.subscription_unsubscribe(token=token, now=timezone.now())
        return "Unsubscribed", "Unsubscribed: nothing more about this product is sent to this address."
