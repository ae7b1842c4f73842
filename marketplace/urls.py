"""URL routes: the admin, the JSON API and the health endpoints."""

from django.contrib import admin
from django.urls import include, path

from marketplace.health import healthz, readyz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("promotions.api.urls")),
    path("healthz", healthz),
    path("readyz", readyz),
]
