"""factory_boy factories for the promotions domain."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from promotions.models import FlashPromo, Product, Subscription


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    name = factory.Sequence(lambda n: f"Product {n}")
    price = Decimal("10.00")


class PromoFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FlashPromo

    product = factory.SubFactory(ProductFactory)
    title = factory.Sequence(lambda n: f"Promo {n}")
    discount_percent = 20
    starts_at = factory.LazyFunction(lambda: timezone.now() + timedelta(hours=1))
    ends_at = factory.LazyAttribute(lambda promo: promo.starts_at + timedelta(hours=1))


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscription

    product = factory.SubFactory(ProductFactory)
    email = factory.Sequence(lambda n: f"shopper{n}@example.com")
