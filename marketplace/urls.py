"""URL routes: the admin, the JSON API and the health endpoints; error views that answer JSON under /api/."""

from django.contrib import admin
from django.urls import include, path

from marketplace.health import healthz, readyz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("promotions.api.urls")),
    path("healthz", healthz),
    path("readyz", readyz),
]

handler400 = "marketplace.errors.bad_request"
handler403 = "marketplace.errors.permission_denied"
handler404 = "marketplace.errors.not_found"
handler500 = "marketplace.errors.server_error"
