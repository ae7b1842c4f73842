"""Property-based requests (schemathesis) against every operation of the API's OpenAPI document, anonymous
and with a token allowed every write: no answer is a 500, and every answer - status code, content type,
headers, body - is one the document describes.

The operations come from the document drf-spectacular generates, so a new endpoint is fuzzed once it is
documented. Requests go to the Django app in-process (WSGI), inside the test's transaction: nothing the API
defers to a commit runs - neither a sweep's publish nor the confirmation request of a fuzzed subscription
(``tasks.request_confirmation``), so nothing is published, even to the run's own Redis database, and nobody is
mailed (``_nothing_published`` checks it). The throttles are off while fuzzing (a 429 would answer most
requests after the first minute's worth and hide the views behind it); one test shows the 429 is documented.
Deterministic: a fixed seed, derandomized, no example database; a failure prints the reproducing request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings

from marketplace.celery import app as celery_app
from marketplace.wsgi import application
from promotions.models import FlashPromo, PromoStatus
from tests.factories import ProductFactory, PromoFactory

pytestmark = pytest.mark.django_db

#: Examples per operation and caller in the fuzzing phase, on top of the coverage phase's boundary cases:
#: 7 operations x 2 callers make ~1,100 requests, 40-60 s on this 2-core machine under load.
MAX_EXAMPLES = 20

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 21,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        # Stateful links between operations are not declared; examples, coverage and fuzzing run.
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_headers_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
        },
    }
)


def _document() -> dict[str, Any]:
    """The document as ``/api/schema`` serves it (``test_api_schema`` holds the two equal)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return dict(json.loads(OpenApiJsonRenderer().render(schema, renderer_context={})))


schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)
schema.app = application  # the WSGI transport: requests go to the app in-process, as from_wsgi does

#: The test client's host, which the test settings allow (schemathesis' default is ``localhost``).
BASE_URL = "http://testserver"


@pytest.fixture(autouse=True)
def _connection_kept_across_requests() -> Iterator[None]:
    """The app closes the database connection when a request ends (``close_old_connections``), which would
    close the test's transaction with it; Django's test client unhooks it for its requests, and so does this."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def rates(settings):
    """Every throttle off (a rate of None: ``promotions.api.throttles`` neither counts nor refuses); the
    returned function sets some back for one test, as ``rates(anon_read="1/minute")``."""

    def set_rates(**scopes: str | None) -> None:
        framework = dict(settings.REST_FRAMEWORK)
        framework["DEFAULT_THROTTLE_RATES"] = {**framework["DEFAULT_THROTTLE_RATES"], **scopes}
        settings.REST_FRAMEWORK = framework

    set_rates(**dict.fromkeys(settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]))
    return set_rates


@pytest.fixture
def _nothing_published(redis_client) -> Iterator[None]:
    """The subscriptions fuzzing creates ask for confirmation on commit; the test's transaction never commits,
    so no confirmation is published - not even to the run's Redis database (the broker and the cache): no
    queue, cache or result key appears - and the callbacks are still pending, never run, when the test ends.
    Keys that were there before (the session's workers share the database) are not this test's."""
    queues = {name.encode() for name in celery_app.amqp.queues}
    before = set(redis_client.keys("*"))
    yield
    assert connection.in_atomic_block, "the requests ran outside the test's transaction: on_commit would run"
    new = set(redis_client.keys("*")) - before
    ours = [k for k in new if k in queues or k.startswith((b"marketplace:", b"celery-task-meta-"))]
    assert ours == [], "something was published or cached while fuzzing"


@pytest.fixture
def rows():
    """A product and a promo in each status, so that generated ids reach the views' logic, not only 404s."""
    product = ProductFactory()
    promos = [PromoFactory(product=product)]
    for state in (PromoStatus.ACTIVE, PromoStatus.ENDED, PromoStatus.CANCELLED):
        promo = PromoFactory(product=product, starts_at=timezone.now() - timedelta(minutes=5))
        FlashPromo.objects.filter(pk=promo.pk).update(status=state, activated_at=timezone.now())
        promos.append(promo)
    return {"product_id": [product.pk], "promo_id": [promo.pk for promo in promos]}


@pytest.fixture(params=["anonymous", "operator"])
def caller_headers(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "anonymous":
        return {}
    return {"Authorization": f"Bearer {request.getfixturevalue('operator_token')}"}


def _aim_at_rows(case: schemathesis.Case[Any], rows: dict[str, list[int]]) -> None:
    """Half of the generated non-negative ids (the even ones), in the path or as a body's ``product_id``, are
    replaced by ids of existing rows: random ids almost never exist. Odd, negative and non-integer ones go as
    generated (404s, refused fields)."""
    for place in (case.path_parameters, case.body):
        if not isinstance(place, dict):
            continue
        for name, ids in rows.items():
            value = place.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0 and value % 2 == 0:
                place[name] = ids[(value // 2) % len(ids)]


@schema.parametrize()
@settings(
    deadline=None,  # a loaded machine: time is no property of the API
    database=None,  # the same requests every run: no examples replayed from an earlier one
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@pytest.mark.usefixtures("_nothing_published")
def test_every_answer_is_documented_and_none_is_a_server_error(case, rows, caller_headers):
    """Given any request the document allows (and the near misses schemathesis derives from it), anonymous
    or with every write permission, the answer is never a 500 and conforms to the document."""
    _aim_at_rows(case, rows)
    case.call_and_validate(base_url=BASE_URL, headers=caller_headers)


@pytest.mark.parametrize(
    ("scope", "path", "method", "body"),
    [
        ("anon_read", "/api/promos", "GET", None),
        ("subscribe", "/api/products/{product_id}/subscriptions", "POST", {"email": "fuzz@example.com"}),
    ],
)
def test_a_throttled_answer_is_the_documented_429_with_retry_after(
    rates, rows, redis_client, scope, path, method, body
):
    """Given a throttle allowing one request, the second is a 429 with ``Retry-After`` and the JSON error body,
    as the document says (schemathesis' checks of status, headers and body)."""
    rates(**{scope: "1/hour"})
    params = {"product_id": rows["product_id"][0]} if "{product_id}" in path else {}
    case = schema[path][method].Case(path_parameters=params, **({} if body is None else {"body": body}))
    first = case.call_and_validate(base_url=BASE_URL)
    throttled = case.call_and_validate(base_url=BASE_URL)
    assert (first.status_code, throttled.status_code) == (200 if method == "GET" else 202, 429)
    retry_after = {name.lower(): values for name, values in throttled.headers.items()}["retry-after"]
    assert 0 < int(retry_after[0]) <= 3600
