"""Request bodies nested deeper than ``API_MAX_JSON_DEPTH`` are a 400 in the API's error shape on every
endpoint that takes a body - never a 500: the probe's 2 KB body nested ~940 levels deep made Python's JSON
decoder raise ``RecursionError`` (a 500 with a logged traceback), anonymous subscribe included."""

from __future__ import annotations

import logging
from io import BytesIO

import pytest
import yaml
from rest_framework.exceptions import ParseError
from rest_framework.test import APIClient

from promotions.api.parsers import JSONParser, json_depth_exceeds
from tests.conftest import ROOT
from tests.factories import ProductFactory, PromoFactory

pytestmark = pytest.mark.django_db


def _nested(depth: int, *, kind: str = "object") -> str:
    """A JSON body nesting ``depth`` objects (``{"a": {"a": ...}}``) or arrays."""
    if kind == "array":
        return "[" * depth + "]" * depth
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def _operations_with_a_body() -> list[tuple[str, str]]:
    """Every (method, path) of the committed document that takes a JSON body: a new endpoint is covered when
    it is documented."""
    document = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "application/json" in operation.get("requestBody", {}).get("content", {})
    ]


OPERATIONS = _operations_with_a_body()
#: The probe's body (2 KB, past Python's recursion limit) and one the decoder parses but the limit refuses.
BODIES = {"probe-940-arrays": _nested(940, kind="array"), "objects-500": _nested(500), "limit-plus-one": _nested(33)}


def test_the_document_lists_the_endpoints_that_take_a_body():
    assert ("POST", "/api/products/{product_id}/subscriptions") in OPERATIONS
    assert ("PATCH", "/api/promos/{promo_id}") in OPERATIONS


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("anonymous", [True, False], ids=["anonymous", "operator"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_a_body_nested_too_deep_is_a_400_on_every_endpoint(method, path, anonymous, body, operator_token, caplog):
    """Given any endpoint that takes a body, anonymous or with a token allowed to write, when the body nests
    deeper than the limit, then the answer is 400 ``{"detail": ...}`` naming the limit, nothing is logged
    as an error, and nothing is created."""
    promo = PromoFactory()
    url = path.replace("{product_id}", str(promo.product_id)).replace("{promo_id}", str(promo.pk))
    client = APIClient()
    if not anonymous:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {operator_token}")
    with caplog.at_level(logging.WARNING):
        response = client.generic(method, url, body, content_type="application/json")
    if anonymous and response.status_code in {401, 403}:
        return  # a write refused before its body is read: nothing parsed
    assert response.status_code == 400, response.content
    assert response.json() == {
        "detail": "JSON parse error - the body nests deeper than 32 levels of objects and arrays."
    }
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_anonymous_subscribe_refuses_the_probe_body():
    """The probe's own request: anonymous, the public endpoint."""
    product = ProductFactory()
    response = APIClient().post(
        f"/api/products/{product.pk}/subscriptions", BODIES["probe-940-arrays"], content_type="application/json"
    )
    assert response.status_code == 400
    assert "nests deeper than 32 levels" in response.json()["detail"]
    assert not product.subscriptions.exists()


@pytest.mark.parametrize("kind", ["object", "array"])
def test_a_body_at_the_limit_is_parsed(kind):
    """The limit counts objects and arrays: 32 levels parse, 33 do not."""
    parser = JSONParser()
    assert parser.parse(BytesIO(_nested(32, kind=kind).encode())) is not None
    with pytest.raises(ParseError):
        parser.parse(BytesIO(_nested(33, kind=kind).encode()))


def test_the_limit_is_a_setting(settings):
    settings.API_MAX_JSON_DEPTH = 2
    parser = JSONParser()
    assert parser.parse(BytesIO(b'{"email": "a@example.com", "tags": [1]}')) == {
        "email": "a@example.com",
        "tags": [1],
    }
    with pytest.raises(ParseError, match="deeper than 2 levels"):
        parser.parse(BytesIO(b'{"a": [[1]]}'))


@pytest.mark.parametrize(
    ("value", "depth"),
    [(1, 0), ("x", 0), ({}, 1), ([], 1), ({"a": [1, {"b": None}]}, 3), ([[], [[[]]], {}], 4)],
)
def test_depth_counts_every_nested_object_and_array(value, depth):
    assert not json_depth_exceeds(value, depth)
    if depth:
        assert json_depth_exceeds(value, depth - 1)


def test_a_malformed_body_is_still_drfs_400():
    product = ProductFactory()
    response = APIClient().post(f"/api/products/{product.pk}/subscriptions", "{", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")
