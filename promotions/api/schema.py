"""The API's OpenAPI description (drf-spectacular): what each view takes and answers, and the error shapes.

The views are plain ``APIView``s that validate with one serializer and answer another (or a dict), which
drf-spectacular cannot guess; each gets its description here, as an ``OpenApiViewExtension`` keyed by the
view's dotted path, so the schema sits beside the serializers rather than between a view's lines. A view
without an entry makes ``manage.py spectacular --fail-on-warn`` fail (tests/promotions/test_api_schema.py).
Imported by the API's routes (``promotions.api.urls``), so only a process that serves or describes the API
loads it - not workers (django.setup() took 0.6-1 s longer with it in ``AppConfig.ready``). Regenerate the
committed document with ``make openapi``.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiViewExtension
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view, inline_serializer
from rest_framework import serializers as fields
from rest_framework.views import APIView

from promotions.api import serializers

__all__ = ["add_error_components"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_INVALID = {"$ref": "#/components/schemas/ValidationError"}
_CONFLICT = {"$ref": "#/components/schemas/Conflict"}

#: The error bodies every answer shares (``promotions.api.errors``, ``marketplace.errors``), as components.
ERROR_COMPONENTS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {"detail": {"type": "string", "description": "What went wrong, for a person."}},
        "required": ["detail"],
    },
    "ValidationError": {
        "type": "object",
        "description": (
            "A body that could not be read (`detail`), or the messages for each refused field under its name "
            "(`non_field_errors` for the body as a whole)."
        ),
        "properties": {"detail": {"type": "string"}},
        "additionalProperties": {"type": "array", "items": {"type": "string"}},
    },
    "Conflict": {
        "type": "object",
        "properties": {
            "detail": {"type": "string"},
            "status": {"type": "string", "description": "The promo's status, which does not allow the change."},
        },
        "required": ["detail", "status"],
    },
}

#: Answers any operation can give: a refused token, and the throttle.
_ALWAYS = {
    401: OpenApiResponse(_ERROR, description="The bearer token is unknown or malformed."),
    429: OpenApiResponse(_ERROR, description="Too many requests: retry after `Retry-After` seconds."),
}
#: Answers of an operation that takes a JSON body.
_BODY = {
    400: OpenApiResponse(_INVALID, description="Invalid JSON, a body nested too deep, or refused fields."),
    415: OpenApiResponse(_ERROR, description="The body is not `application/json`."),
}
_STAFF = {403: OpenApiResponse(_ERROR, description="The token's user may not make this change.")}
_NO_PROMO = {404: OpenApiResponse(_ERROR, description="No promo with this id.")}
_CONFLICTS = {409: OpenApiResponse(_CONFLICT, description="The promo's status does not allow this change.")}

_PRODUCT = inline_serializer(
    "Product",
    {
        "id": fields.IntegerField(),
        "name": fields.CharField(),
        "price": fields.DecimalField(max_digits=10, decimal_places=2, coerce_to_string=True),
    },
)
_SUBSCRIPTION = inline_serializer(
    "Subscription",
    {"id": fields.IntegerField(), "product_id": fields.IntegerField(), "created": fields.BooleanField()},
)


def _answers(*groups: dict[int, Any]) -> dict[int, Any]:
    """One operation's responses, by status code in order (the document reads like the HTTP table)."""
    merged = {code: answer for group in groups for code, answer in group.items()}
    return dict(sorted(merged.items()))


def add_error_components(result: dict[str, Any], generator: SchemaGenerator, **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular post-processing hook (``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]``): adds the error
    shapes the responses above refer to."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(ERROR_COMPONENTS)
    return result


def _describe(view: str, **operations: Any) -> None:
    """Registers the schema of each of ``operations`` (HTTP method -> ``extend_schema(...)``) for the view at
    the dotted path ``view``. drf-spectacular documents a subclass so decorated; the view itself is left as
    it is. A path that names no view any more is a warning, so a rename fails the schema test."""

    def view_replacement(extension: OpenApiViewExtension) -> type[APIView]:
        view_class = extension.target
        described = type(view_class.__name__, (view_class,), {"__module__": view_class.__module__})
        return extend_schema_view(**operations)(described)

    name = f"{view.rpartition('.')[2]}Schema"
    # A subclass of OpenApiViewExtension registers itself where it is defined.
    type(name, (OpenApiViewExtension,), {"target_class": view, "view_replacement": view_replacement})


_describe(
    "promotions.api.views.ProductCreateView",
    post=extend_schema(
        summary="Create a product",
        request=serializers.ProductInput,
        responses=_answers({201: _PRODUCT}, _BODY, _ALWAYS, _STAFF),
    ),
)
_describe(
    "promotions.api.views.SubscriptionCreateView",
    post=extend_schema(
        summary="Subscribe an address to a product's promos",
        request=serializers.SubscriptionInput,
        responses=_answers(
            {201: _SUBSCRIPTION, 404: OpenApiResponse(_ERROR, description="No product with this id.")},
            _BODY,
            _ALWAYS,
        ),
    ),
)
_describe(
    "promotions.api.views.PromoCollectionView",
    get=extend_schema(
        summary="List promos, soonest start first",
        parameters=[serializers.PromoListQuery],
        responses=_answers(
            {
                200: serializers.PromoOutput(many=True),
                400: OpenApiResponse(_INVALID, description="A refused query parameter."),
            },
            _ALWAYS,
        ),
    ),
    post=extend_schema(
        summary="Create a promo",
        request=serializers.PromoInput,
        responses=_answers({201: serializers.PromoOutput}, _BODY, _ALWAYS, _STAFF),
    ),
)
_describe(
    "promotions.api.views.PromoDetailView",
    get=extend_schema(summary="Read a promo", responses=_answers({200: serializers.PromoOutput}, _NO_PROMO, _ALWAYS)),
    patch=extend_schema(
        summary="Change a scheduled promo",
        request=serializers.PromoUpdate,
        responses=_answers({200: serializers.PromoOutput}, _BODY, _ALWAYS, _STAFF, _NO_PROMO, _CONFLICTS),
    ),
)
_describe(
    "promotions.api.views.PromoCancelView",
    post=extend_schema(
        summary="Cancel a promo (repeating it answers 200 again)",
        request=None,
        responses=_answers({200: serializers.PromoOutput}, _BODY, _ALWAYS, _STAFF, _NO_PROMO, _CONFLICTS),
    ),
)
# UnknownEndpointView (the catch-all JSON 404) defines no method: it is in no path of the document.


class _BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]  # registers itself, untyped
    """The API's knox tokens, ``Authorization: Bearer <token>``: drf-spectacular knows DRF's token class (the one
    before knox) but not this subclass of knox's, whose header keyword the settings change."""

    target_class = "promotions.api.auth.BearerTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer"}
