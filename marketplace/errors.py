"""Django's error views (``handler400``/``403``/``404``/``500``): a JSON body for paths under ``/api/``,
Django's own pages elsewhere (the admin). They answer what happens outside DRF's views - a refused host, a body
too large, an unhandled exception - when ``DEBUG`` is off; with it on, Django shows its debug pages instead.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

__all__ = ["bad_request", "not_found", "permission_denied", "server_error"]

API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": "Bad request."}, status=400)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": "You do not have permission to perform this action."}, status=403)
    return defaults.permission_denied(request, exception)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return JsonResponse({"detail": f"No API endpoint at {request.path}."}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        # No detail of the error: it is logged and sent to Sentry, not shown to a client.
        return JsonResponse({"detail": "Internal server error."}, status=500)
    return defaults.server_error(request)
