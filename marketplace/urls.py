"""URL routes: the admin, the JSON API and its OpenAPI schema, the health endpoints; error views that answer
JSON under /api/."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiYamlRenderer
from drf_spectacular.views import SpectacularAPIView

from marketplace.health import healthz, readyz

urlpatterns = [
    path("admin/", admin.site.urls),
    # The API's OpenAPI document, public like the API it describes: JSON, or YAML with ?format=yaml.
    path(
        "api/schema",
        SpectacularAPIView.as_view(
            renderer_classes=[OpenApiJsonRenderer, OpenApiYamlRenderer], authentication_classes=[]
        ),
    ),
    path("api/", include("promotions.api.urls")),
    path("healthz", healthz),
    path("readyz", readyz),
]

handler400 = "marketplace.errors.bad_request"
handler403 = "marketplace.errors.permission_denied"
handler404 = "marketplace.errors.not_found"
handler500 = "marketplace.errors.server_error"
