"""factory_boy factories for the promotions domain."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import factory.django
from django.utils import timezone
from factory.declarations import LazyAttribute, LazyFunction, Sequence, SubFactory

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
