"""API views: validate input, call one service or selector, shape the output.

Writes to products and promos need a staff user's bearer token and the model permission the admin would
ask for (401 without a valid token, 403 for a non-staff user or a missing permission:
``promotions.api.permissions``); subscribing is public and double opt-in (``promotions.consent``; its links:
``promotions.api.consent``). Reads of promos are public too, but only staff with the view permission see
scheduled, ended and cancelled promos and notification counts; anyone else sees active promos. Public endpoints
are throttled (``promotions.api.throttles``: 429 with ``Retry-After``). Invalid input gets 400 with errors by
field, a change the promo's status does not allow 409, and every error a JSON body (``promotions.api.errors``).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from promotions import consent, selectors, services, tasks
from promotions.api import serializers
from promotions.api.permissions import StaffWithModelPermission, sees_everything
from promotions.api.throttles import AnonymousReadThrottle, SubscribeClientThrottle, SubscribeEmailThrottle
from promotions.models import FlashPromo, Product


class ProductCreateView(APIView):
    permission_classes = [StaffWithModelPermission]
    required_permissions = {"POST": ("promotions.add_product",)}

    def post(self, request: Request) -> Response:
        data = _validated(serializers.ProductInput, request)
        product = services.product_create(name=data["name"], price=data["price"])
        return Response({"id": product.pk, "name": product.name, "price": str(product.price)}, status=201)


class SubscriptionCreateView(APIView):
    permission_classes = [AllowAny]
    throttle_classes = [SubscribeClientThrottle, SubscribeEmailThrottle]

    def post(self, request: Request, product_id: int) -> Response:
        product = Product.objects.filter(pk=product_id).first()
        if product is None:
            raise NotFound("No product with this id.")
        data = _validated(serializers.SubscriptionInput, request)
        result = consent.subscription_request(product=product, email=data["email"], now=timezone.now())
        if result.confirmation_requested:
            tasks.request_confirmation(result.subscription_id)
        # One answer whatever the address's state (new, awaiting confirmation, confirmed, unsubscribed): it
        # must not tell who is subscribed.
        return Response(SUBSCRIBE_ANSWER, status=status.HTTP_202_ACCEPTED)


#: The body of every accepted subscribe request.
SUBSCRIBE_ANSWER = {
    "detail": "Accepted. Unless this address is subscribed already, it gets a message with a link to confirm; "
    "nothing else is sent to it before it confirms."
}


class PromoCollectionView(APIView):
    permission_classes = [StaffWithModelPermission]
    required_permissions = {"POST": ("promotions.add_flashpromo",)}
    throttle_classes = [AnonymousReadThrottle]

    def get(self, request: Request) -> Response:
        query = serializers.PromoListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        page = query.validated_data
        window = {"status": page.get("status"), "limit": page["limit"], "offset": page["offset"]}
        if sees_everything(request):
            return Response(serializers.PromoOutput(selectors.promos_list(**window), many=True).data)
        return Response(serializers.PublicPromoOutput(selectors.promos_list_public(**window), many=True).data)

    def post(self, request: Request) -> Response:
        data = _validated(serializers.PromoInput, request)
        product = Product.objects.filter(pk=data.pop("product_id")).first()
        if product is None:
            return Response({"product_id": ["No product with this id."]}, status=status.HTTP_400_BAD_REQUEST)
        with transaction.atomic():
            promo = services.promo_create(product=product, now=timezone.now(), **data)
            tasks.schedule_promptly()
        return Response(_promo(promo.pk), status=201)


class PromoDetailView(APIView):
    permission_classes = [StaffWithModelPermission]
    required_permissions = {"PATCH": ("promotions.change_flashpromo",)}
    throttle_classes = [AnonymousReadThrottle]

    def get(self, request: Request, promo_id: int) -> Response:
        return Response(_promo(promo_id, full=sees_everything(request)))

    def patch(self, request: Request, promo_id: int) -> Response:
        data = _validated(serializers.PromoUpdate, request)
        with transaction.atomic():
            try:
                services.promo_update(promo_id=promo_id, now=timezone.now(), **data)
            except FlashPromo.DoesNotExist:
                raise _no_such_promo() from None
            if "starts_at" in data or "ends_at" in data:
                tasks.schedule_promptly()  # countdowns for the new times
        return Response(_promo(promo_id))


class PromoCancelView(APIView):
    """``POST /api/promos/{id}/cancel``: an action, not a ``DELETE`` - the promo stays, readable as
    ``cancelled``, until the retention cleanup; repeating it answers 200 again (a retry after a lost answer)."""

    permission_classes = [StaffWithModelPermission]
    required_permissions = {"POST": ("promotions.change_flashpromo",)}

    def post(self, request: Request, promo_id: int) -> Response:
        _validated(serializers.StrictInput, request)  # no body, or an empty object
        try:
            services.promo_cancel(promo_id=promo_id, now=timezone.now())
        except FlashPromo.DoesNotExist:
            raise _no_such_promo() from None
        return Response(_promo(promo_id))


class UnknownEndpointView(APIView):
    """Any other path under ``/api/``: a JSON 404 whatever the method, instead of Django's HTML page."""

    authentication_classes: list[type] = []  # a wrong token on a wrong path: the path is the error to report
    permission_classes = [AllowAny]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # Runs before any method's handler (OPTIONS and unknown methods too), inside DRF's error handling.
        raise NotFound(f"No API endpoint at {request.path}.")


def _promo(promo_id: int, *, full: bool = True) -> dict[str, Any]:
    """The promo with everything (the answer to a write: its writer holds a promo permission), or as the public
    sees it (``full=False``), where a promo hidden from them is 404, as one that does not exist."""
    try:
        if full:
            return dict(serializers.PromoOutput(selectors.promo_get(promo_id=promo_id)).data)
        return dict(serializers.PublicPromoOutput(selectors.promo_get_public(promo_id=promo_id)).data)
    except FlashPromo.DoesNotExist:
        raise _no_such_promo() from None


def _no_such_promo() -> NotFound:
    return NotFound("No promo with this id.")


def _validated(serializer_class: type[Serializer[Any]], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
