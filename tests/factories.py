"""factory_boy factories for the promotions domain."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import factory.django
from django.utils import timezone
from factory.declarations import LazyAttribute, LazyFunction, Sequence, SubFactory, Trait

from promotions.models import FlashPromo, Product, Subscription


class ProductFactory(factory.django.DjangoModelFactory[Product]):
    class Meta:
        model = Product

    name = Sequence(lambda n: f"Product {n}")
    price = Decimal("10.00")


class PromoFactory(factory.django.DjangoModelFactory[FlashPromo]):
    class Meta:
        model = FlashPromo

    product = SubFactory(ProductFactory)
    title = Sequence(lambda n: f"Promo {n}")
    discount_percent = 20
    starts_at = LazyFunction(lambda: timezone.now() + timedelta(hours=1))
    ends_at = LazyAttribute(lambda promo: promo.starts_at + timedelta(hours=1))


class SubscriptionFactory(factory.django.DjangoModelFactory[Subscription]):
    class Meta:
        model = Subscription

    product = SubFactory(ProductFactory)
    email = Sequence(lambda n: f"shopper{n}@example.com")
    #: Confirmed by default (double opt-in done): the tests of promos and delivery are about notified subscribers.
    confirmed_at = LazyFunction(timezone.now)

    class Params:
        #: ``SubscriptionFactory(unconfirmed=True)``: subscribed through the API, the link not clicked yet.
        unconfirmed = Trait(confirmed_at=None)


#: What the API's writes and full reads ask of a staff user (``promotions.api.permissions``).
API_PERMISSIONS = ("add_product", "add_flashpromo", "change_flashpromo", "view_flashpromo")


def grant(user: Any, *codenames: str) -> None:
    """Give ``user`` the promotions permissions ``codenames``."""
    from django.contrib.auth.models import Permission

    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="promotions", codename__in=codenames))


def promo_api_body(product: Product) -> dict[str, Any]:
    """A valid ``POST /api/promos`` body for ``product``: two hours, starting in an hour."""
    starts_at = timezone.now() + timedelta(hours=1)
    return {
        "product_id": product.pk,
        "title": "Half price",
        "discount_percent": 50,
        "starts_at": starts_at.isoformat(),
        "ends_at": (starts_at + timedelta(hours=2)).isoformat(),
    }
