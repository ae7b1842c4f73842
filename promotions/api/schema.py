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
from drf_spectacular.utils import (
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
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

#: The answer any operation can give: a refused token (the token is checked wherever one is sent).
_ALWAYS = {401: OpenApiResponse(_ERROR, description="The bearer token is unknown, expired or malformed.")}
#: The answer of a throttled operation (``promotions.api.throttles``); ``add_error_components`` documents its
#: ``Retry-After`` header. Writes are not throttled: they need a staff token.
_THROTTLED = {
    429: OpenApiResponse(
        _ERROR,
        description="Too many requests from this client (or for this address): retry after `Retry-After` seconds.",
    )
}
#: Answers of an operation that takes a JSON body.
_BODY = {
    400: OpenApiResponse(_INVALID, description="Invalid JSON, a body nested too deep, or refused fields."),
    415: OpenApiResponse(_ERROR, description="The body is not `application/json`."),
}
#: Writes: no token, or a refused one, is a 401; a token whose user is not staff or lacks the model
#: permission the admin would ask for (``promotions.api.permissions``) is a 403.
_STAFF = {
    401: OpenApiResponse(_ERROR, description="No bearer token, or one unknown, expired or malformed."),
    403: OpenApiResponse(
        _ERROR,
        description="The token's user is not staff or lacks the model permission this "
        "change needs (the `detail` names it).",
    ),
}
#: Who may call a write: a bearer token only. Reads and subscribing: a token or none (``{}``), which
#: drf-spectacular cannot infer from the views' own permission class.
#: (``Any``: extend_schema's stub types ``auth`` as names, but drf-spectacular writes it as the security list.)
_TOKEN: Any = [{"tokenAuth": []}]
_TOKEN_OR_NONE: Any = [{"tokenAuth": []}, {}]
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
_SUBSCRIBE_ACCEPTED = inline_serializer(
    "SubscriptionAccepted",
    {"detail": fields.CharField(help_text="The same for every address, subscribed or not.")},
)
#: Who gets which shape of a promo (``promotions.api.permissions.sees_everything``).
_AS_SEEN = (
    "Staff with the `promotions.view_flashpromo` permission get `PromoOutput` (promos in every status, with "
    "notification counts); anyone else - anonymous or another token - gets `PublicPromoOutput` (active promos "
    "only, no counts; any other promo is a 404, as one that does not exist)."
)
_AS_SEEN_IN_LIST = _AS_SEEN.replace("; any other promo is a 404, as one that does not exist", "")


def _promo_as_seen(*, many: bool) -> PolymorphicProxySerializer:
    return PolymorphicProxySerializer(
        component_name="PromoAsSeen",  # the item of the list too
        serializers=[serializers.PublicPromoOutput, serializers.PromoOutput],
        resource_type_field_name=None,  # no field tells them apart: the caller's permission does
        many=many,
    )


def _answers(*groups: dict[int, Any]) -> dict[int, Any]:
    """One operation's responses, by status code in order (the document reads like the HTTP table)."""
    merged = {code: answer for group in groups for code, answer in group.items()}
    return dict(sorted(merged.items()))


def add_error_components(result: dict[str, Any], generator: SchemaGenerator, **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular post-processing hook (``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]``): adds the error
    shapes the responses above refer to, closes the public promo's shape, and gives every 429 its
    ``Retry-After`` header (``OpenApiResponse`` takes no headers)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(ERROR_COMPONENTS)
    # The public shape has nothing more: a full promo is not one (the oneOf of the reads tells them apart).
    if "PublicPromoOutput" in schemas:
        schemas["PublicPromoOutput"]["additionalProperties"] = False
    for item in result.get("paths", {}).values():
        for operation in item.values():
            throttled = operation.get("responses", {}).get("429") if isinstance(operation, dict) else None
            if throttled is not None:
                throttled["headers"] = {"Retry-After": _RETRY_AFTER}
    return result


_RETRY_AFTER = {
    "description": "Seconds until the client's window closes and requests are counted afresh.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}


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
        auth=_TOKEN,
        request=serializers.ProductInput,
        responses=_answers({201: _PRODUCT}, _BODY, _STAFF),
    ),
)
_describe(
    "promotions.api.views.SubscriptionCreateView",
    post=extend_schema(
        summary="Subscribe an address to a product's promos (double opt-in)",
        description=(
            "Always 202 with the same body, whatever the address's state: unless it is subscribed already, the "
            "address is sent a link to confirm, and nothing else before it confirms. The links in that message "
            "(`/api/subscriptions/confirm/{token}`, `/api/subscriptions/unsubscribe/{token}`) are pages for a "
            "person, outside this document."
        ),
        auth=_TOKEN_OR_NONE,
        request=serializers.SubscriptionInput,
        responses=_answers(
            {202: _SUBSCRIBE_ACCEPTED, 404: OpenApiResponse(_ERROR, description="No product with this id.")},
            _BODY,
            _ALWAYS,
            _THROTTLED,
        ),
    ),
)
_describe(
    "promotions.api.views.PromoCollectionView",
    get=extend_schema(
        summary="List promos, soonest start first",
        operation_id="promos_list",  # the answer is no list serializer, from which drf-spectacular would infer it
        description=_AS_SEEN_IN_LIST,
        auth=_TOKEN_OR_NONE,
        parameters=[serializers.PromoListQuery],
        responses=_answers(
            {
                200: OpenApiResponse(_promo_as_seen(many=True), description=_AS_SEEN_IN_LIST),
                400: OpenApiResponse(_INVALID, description="A refused query parameter."),
            },
            _ALWAYS,
            _THROTTLED,
        ),
    ),
    post=extend_schema(
        summary="Create a promo",
        auth=_TOKEN,
        request=serializers.PromoInput,
        responses=_answers({201: serializers.PromoOutput}, _BODY, _STAFF),
    ),
)
_describe(
    "promotions.api.views.PromoDetailView",
    get=extend_schema(
        summary="Read a promo",
        description=_AS_SEEN,
        auth=_TOKEN_OR_NONE,
        responses=_answers(
            {200: OpenApiResponse(_promo_as_seen(many=False), description=_AS_SEEN)},
            {404: OpenApiResponse(_ERROR, description="No promo with this id that the caller may see.")},
            _ALWAYS,
            _THROTTLED,
        ),
    ),
    patch=extend_schema(
        summary="Change a scheduled promo",
        auth=_TOKEN,
        request=serializers.PromoUpdate,
        responses=_answers({200: serializers.PromoOutput}, _BODY, _STAFF, _NO_PROMO, _CONFLICTS),
    ),
)
_describe(
    "promotions.api.views.PromoCancelView",
    post=extend_schema(
        summary="Cancel a promo (repeating it answers 200 again)",
        auth=_TOKEN,
        request=None,
        responses=_answers({200: serializers.PromoOutput}, _BODY, _STAFF, _NO_PROMO, _CONFLICTS),
    ),
)
# UnknownEndpointView (the catch-all JSON 404) defines no method: it is in no path of the document. Nor are the
# consent links (promotions.api.consent): plain Django views answering an HTML page or JSON, which
# drf-spectacular describes only through a DRF wrapper they do not have; the README's API table lists them.


class _BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]  # registers itself, untyped
    """The API's knox tokens, ``Authorization: Bearer <token>``: drf-spectacular knows DRF's token class (the one
    before knox) but not this subclass of knox's, whose header keyword the settings change."""

    target_class = "promotions.api.auth.BearerTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer"}
