"""Routes of the JSON API, mounted under ``/api/``. Ids are digits only (``int``); any other path - a
non-numeric id, a trailing slash, an unknown name - falls to the catch-all, a JSON 404."""

from django.urls import path, re_path

import promotions.api.schema  # noqa: F401  (registers the views' OpenAPI descriptions: see its docstring)
from promotions.api import consent, views

urlpatterns = [
    path("products", views.ProductCreateView.as_view()),
    path("products/<int:product_id>/subscriptions", views.SubscriptionCreateView.as_view()),
    path("promos", views.PromoCollectionView.as_view()),
    path("promos/<int:promo_id>", views.PromoDetailView.as_view()),
    path("promos/<int:promo_id>/cancel", views.PromoCancelView.as_view()),
    # The links mailed to subscribers (named: messages build them with reverse()).
    path("subscriptions/confirm/<str:token>", consent.ConfirmView.as_view(), name="subscription-confirm"),
    path("subscriptions/unsubscribe/<str:token>", consent.UnsubscribeView.as_view(), name="subscription-unsubscribe"),
    re_path(r"", views.UnknownEndpointView.as_view()),
]
