"""Routes of the JSON API, mounted under ``/api/``."""

from django.urls import path

from promotions.api import views

urlpatterns = [
    path("products", views.ProductCreateView.as_view()),
    path("products/<int:product_id>/subscriptions", views.SubscriptionCreateView.as_view()),
    path("promos", views.PromoCollectionView.as_view()),
    path("promos/<int:promo_id>", views.PromoDetailView.as_view()),
]
