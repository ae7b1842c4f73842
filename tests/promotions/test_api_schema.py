"""The API's OpenAPI document: generated from the code without a warning, valid, equal to the committed
``docs/openapi.yaml``, naming every field of the serializers, saying who may call what and what each caller
gets (the API as ``promotions.api.permissions``, ``throttles`` and ``consent`` make it), and served to anyone
at ``/api/schema``."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from rest_framework.test import APIClient

from promotions.api import serializers
from tests.conftest import ROOT

COMMITTED = ROOT / "docs" / "openapi.yaml"
REGENERATE = "make openapi (manage.py spectacular --validate --fail-on-warn --file docs/openapi.yaml)"


def _generate(tmp_path: Path) -> str:
    """The document as ``make openapi`` writes it: generation warnings and an invalid document both fail."""
    target = tmp_path / "openapi.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target), stderr=StringIO())
    return target.read_text()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _generate(tmp_path_factory.mktemp("openapi"))


def test_the_generated_document_is_valid_and_without_warnings(generated):
    """drf-spectacular can describe every view (a view it must guess at is a warning, and fails) and the
    document validates against the OpenAPI 3 specification."""
    assert yaml.safe_load(generated)["openapi"].startswith("3.")


def test_the_committed_document_is_the_generated_one(generated):
    """A change to a view, a serializer or ``promotions/api/schema.py`` comes with its regenerated document."""
    committed = COMMITTED.read_text() if COMMITTED.exists() else ""
    assert committed == generated, f"docs/openapi.yaml is out of date: regenerate it with {REGENERATE}"


@pytest.mark.parametrize(
    ("component", "serializer"),
    [
        ("ProductInputRequest", serializers.ProductInput),
        ("SubscriptionInputRequest", serializers.SubscriptionInput),
        ("PromoInputRequest", serializers.PromoInput),
        ("PatchedPromoUpdateRequest", serializers.PromoUpdate),
        ("PromoOutput", serializers.PromoOutput),
        ("PublicPromoOutput", serializers.PublicPromoOutput),
    ],
)
def test_every_serializer_field_is_in_the_document(generated, component, serializer):
    """Each request and response body names exactly its serializer's fields; a request body requires what its
    serializer requires."""
    schema = yaml.safe_load(generated)["components"]["schemas"][component]
    fields = serializer().fields
    assert set(schema["properties"]) == set(fields)
    if component.endswith("Request"):
        assert set(schema.get("required", [])) == {name for name, field in fields.items() if field.required}


def test_every_query_parameter_of_the_list_is_in_the_document(generated):
    operation = yaml.safe_load(generated)["paths"]["/api/promos"]["get"]
    assert {p["name"] for p in operation["parameters"]} == set(serializers.PromoListQuery().fields)


def _every_operation(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    methods = {"get", "post", "put", "patch", "delete"}
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in methods
    ]


#: The operations with a throttle (``promotions.api.throttles``); writes have none.
THROTTLED = {
    ("/api/products/{product_id}/subscriptions", "post"),
    ("/api/promos", "get"),
    ("/api/promos/{promo_id}", "get"),
}


def test_every_operation_documents_its_errors_in_the_json_error_shape(generated):
    """A client reads every error of every operation from the document: 401 (a refused token) everywhere, 429
    (the throttle, with ``Retry-After``) where a throttle counts, 400/415 where a body is taken, 403 where a
    permission is needed."""
    document = yaml.safe_load(generated)
    for path, method, operation in _every_operation(document):
        codes = set(operation["responses"])
        assert "401" in codes, (method, path)
        assert ("429" in codes) == ((path, method) in THROTTLED), (method, path)
        if "429" in codes:
            assert operation["responses"]["429"]["headers"]["Retry-After"]["required"] is True
        if "requestBody" in operation:
            assert {"400", "415"} <= codes, (method, path)
        if {} not in operation.get("security", [{}]):
            assert "403" in codes, (method, path)
        for code, answer in operation["responses"].items():
            if code.startswith("4"):
                assert answer["content"]["application/json"]["schema"]["$ref"].startswith("#/components/"), code


def test_anyone_may_read_promos_and_subscribe_and_only_a_token_may_write(generated):
    """The security of each operation is who the permission class lets in: reads and subscribing take a token
    or none (``{}``), every write a token."""
    document = yaml.safe_load(generated)
    public = {
        ("/api/products/{product_id}/subscriptions", "post"),
        ("/api/promos", "get"),
        ("/api/promos/{promo_id}", "get"),
    }
    for path, method, operation in _every_operation(document):
        expected = [{"tokenAuth": []}, {}] if (path, method) in public else [{"tokenAuth": []}]
        assert operation["security"] == expected, (method, path)


def test_a_promo_read_documents_both_shapes_and_who_gets_which(generated):
    """Staff with the view permission get ``PromoOutput``, anyone else ``PublicPromoOutput``: the answer is one
    of them (the public one allows no other property, so a full promo is not both)."""
    document = yaml.safe_load(generated)
    shapes = {"$ref": "#/components/schemas/PromoAsSeen"}
    listed = document["paths"]["/api/promos"]["get"]["responses"]["200"]
    one = document["paths"]["/api/promos/{promo_id}"]["get"]["responses"]["200"]
    assert listed["content"]["application/json"]["schema"] == {"type": "array", "items": shapes}
    assert one["content"]["application/json"]["schema"] == shapes
    assert document["components"]["schemas"]["PromoAsSeen"]["oneOf"] == [
        {"$ref": "#/components/schemas/PublicPromoOutput"},
        {"$ref": "#/components/schemas/PromoOutput"},
    ]
    assert document["components"]["schemas"]["PublicPromoOutput"]["additionalProperties"] is False
    for answer in (listed, one):
        assert "promotions.view_flashpromo" in answer["description"] and "PublicPromoOutput" in answer["description"]


def test_subscribing_is_documented_as_the_202_it_always_is(generated):
    operation = yaml.safe_load(generated)["paths"]["/api/products/{product_id}/subscriptions"]["post"]
    assert {code for code in operation["responses"] if code.startswith("2")} == {"202"}
    accepted = operation["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].rpartition("/")[2]
    assert yaml.safe_load(generated)["components"]["schemas"][accepted]["required"] == ["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token"])
def test_the_document_is_served_to_anyone_as_json(generated, authorization):
    """``GET /api/schema`` is public, like the API it describes: no token needed, and a wrong one is not an
    error there (the document is the same for every caller)."""
    client = APIClient()
    if authorization:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    response = client.get("/api/schema")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    assert response.json() == yaml.safe_load(generated)


@pytest.mark.django_db
def test_the_document_is_served_as_yaml_on_request(generated):
    response = APIClient().get("/api/schema", {"format": "yaml"})
    assert response.status_code == 200
    assert yaml.safe_load(response.content) == yaml.safe_load(generated)
