"""API views: validate input, call one service or selector, shape the output.

Writes to products and promos need a staff user's bearer token (401 without a valid token, 403 for a
non-staff user); subscribing is public. Invalid input gets 400 with errors by field.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.shortcuts import get_object_or_404
from rest_framework import status
from rest_framework.permissions import AllowAny, BasePermission, IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from promotions import selectors, services, tasks
from promotions.api import serializers
from promotions.models import FlashPromo, Product


class ProductCreateView(APIView):
    permission_classes = [IsAdminUser]

    def post(self, request: Request) -> Response:
        data = _validated(serializers.ProductInput, request)
        product = services.product_create(name=data["name"], price=data["price"])
        return Response({"id": product.pk, "name": product.name, "price": str(product.price)}, status=201)


class SubscriptionCreateView(APIView):
    permission_classes = [AllowAny]

    def post(self, request: Request, product_id: int) -> Response:
        product = get_object_or_404(Product, pk=product_id)
        data = _validated(serializers.SubscriptionInput, request)
        subscription, created = services.subscription_create(product=product, email=data["email"])
        return Response(
            {"id": subscription.pk, "product_id": product.pk, "created": created},
            status=status.HTTP_201_CREATED,
        )


class PromoCollectionView(APIView):
    def get_permissions(self) -> list[BasePermission]:
        return [IsAdminUser()] if self.request.method == "POST" else [AllowAny()]

    def get(self, request: Request) -> Response:
        query = serializers.PromoListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        page = query.validated_data
        promos = selectors.promos_list(status=page.get("status"), limit=page["limit"], offset=page["offset"])
        return Response(serializers.PromoOutput(promos, many=True).data)

    def post(self, request: Request) -> Response:
        data = _validated(serializers.PromoInput, request)
        product = Product.objects.filter(pk=data.pop("product_id")).first()
        if product is None:
            return Response({"product_id": ["No product with this id."]}, status=status.HTTP_400_BAD_REQUEST)
        with transaction.atomic():
            promo = services.promo_create(product=product, **data)
            tasks.schedule_promptly()
        return Response(serializers.PromoOutput(selectors.promo_get(promo_id=promo.pk)).data, status=201)


class PromoDetailView(APIView):
    permission_classes = [AllowAny]

    def get(self, request: Request, promo_id: int) -> Response:
        try:
            promo = selectors.promo_get(promo_id=promo_id)
        except FlashPromo.DoesNotExist:
            return Response({"detail": "No promo with this id."}, status=status.HTTP_404_NOT_FOUND)
        return Response(serializers.PromoOutput(promo).data)


def _validated(serializer_class: type[Serializer[Any]], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
