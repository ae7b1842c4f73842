"""Consent: subscribing is double opt-in, every notification can be unsubscribed from in one request.

The probe of issue 21 subscribed 300 third-party addresses through the public endpoint and each was mailed the
next promo. Here those addresses get a confirmation request each (once, however often they are subscribed) and
no promo; a subscriber is notified only after clicking the link; the links are signed, and the confirmation
link expires; each email carries ``List-Unsubscribe`` + ``List-Unsubscribe-Post`` (RFC 8058) and a body link, and
the one-click POST stops even the notifications already queued.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from io import StringIO
from typing import Any
from urllib.parse import urlparse

import pytest
from django.core import signing
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from promotions import consent
from promotions.api.consent import CONTENT_SECURITY_POLICY
from promotions.api.views import SUBSCRIBE_ANSWER
from promotions.models import Notification, NotificationStatus, Subscription
from promotions.tasks import check_active_promos, deliver_notification_batch
from tests.conftest import RESULT_TIMEOUT, wait_for
from tests.factories import ProductFactory, PromoFactory, SubscriptionFactory

#: What a browser sends when a person opens a link or submits a form.
_BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
_LINK = re.compile(r"https?://\S+/api/subscriptions/(?:confirm|unsubscribe)/\S+")


def _subscribe(client: APIClient, product_id: int, email: str) -> Any:
    return client.post(f"/api/products/{product_id}/subscriptions", {"email": email}, format="json")


def _path(url: str) -> str:
    return urlparse(url).path


def _body(message: Any) -> str:
    return str(message.get_payload(decode=True).decode())


def _header(message: Any, name: str) -> str:
    # A long header comes folded over lines: unfolded, it is the value that was set.
    return "".join(str(message[name]).split())


def _messages_to(sink: Any, address: str) -> list[Any]:
    with sink.lock:
        return [m for m in sink.messages if str(m["To"]) == address]


# --- The subscribe answer and the confirmation request (no worker: what is published is captured) ---------


@pytest.mark.django_db
def test_the_answer_is_the_same_202_whatever_the_address_state(django_capture_on_commit_callbacks):
    """Given addresses that are new, awaiting confirmation, confirmed, and unsubscribed, when each subscribes,
    then every answer is the same 202 and body: the endpoint does not tell who is subscribed. Only the new one
    is sent a confirmation request (the pending one was just sent one; the confirmed one needs none)."""
    product = ProductFactory()
    client = APIClient()
    _subscribe(client, product.pk, "pending@example.com")  # asked to confirm just now
    SubscriptionFactory(product=product, email="confirmed@example.com")
    SubscriptionFactory(product=product, email="left@example.com", unsubscribed_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=False) as published:
        answers = [
            _subscribe(client, product.pk, email)
            for email in ("new@example.com", "pending@example.com", "confirmed@example.com", "left@example.com")
        ]

    assert {response.status_code for response in answers} == {202}
    assert all(response.json() == SUBSCRIBE_ANSWER for response in answers)
    assert len({response.content for response in answers}) == 1
    assert len(published) == 2  # new, and the unsubscribed one asking to come back
    new = Subscription.objects.get(email="new@example.com")
    assert (new.confirmed_at, new.unsubscribed_at) == (None, None)
    assert Subscription.objects.get(email="left@example.com").unsubscribed_at is not None  # until it confirms


@pytest.mark.django_db
def test_an_address_is_asked_to_confirm_once_per_resend_interval_whatever_it_subscribes_to(
    settings, django_capture_on_commit_callbacks
):
    """Given an address subscribed to a product, when it is subscribed again to it and to two other products
    within ``SUBSCRIPTION_CONFIRM_RESEND_INTERVAL_SECONDS``, then nothing more is published; once the interval
    has passed, subscribing again asks again."""
    settings.SUBSCRIPTION_CONFIRM_RESEND_INTERVAL_SECONDS = 600
    products = ProductFactory.create_batch(3)
    client = APIClient()

    with django_capture_on_commit_callbacks(execute=False) as published:
        for product in [products[0], *products]:
            assert _subscribe(client, product.pk, "Victim@Example.com ").status_code == 202
    assert len(published) == 1
    assert Subscription.objects.filter(email="victim@example.com", confirmed_at__isnull=True).count() == 3

    Subscription.objects.update(confirmation_sent_at=timezone.now() - timedelta(seconds=601))
    with django_capture_on_commit_callbacks(execute=False) as published:
        _subscribe(client, products[1].pk, "victim@example.com")
    assert len(published) == 1


# --- Links: confirm and unsubscribe (in-process, no worker) ------------------------------------------------


@pytest.mark.django_db
def test_opening_either_link_changes_nothing_and_shows_a_one_button_form():
    """Mail scanners open links in received mail before anyone does. Given an unconfirmed subscription and a
    confirmed one, when their confirmation and unsubscribe links are fetched with GET and HEAD (several times),
    then the first stays unconfirmed and the second subscribed; each GET is 200 with a page holding one form that
    POSTs to the same address, the product's name escaped, behind a CSP that loads nothing."""
    product = ProductFactory(name="<b>Tea & co</b>")
    pending = SubscriptionFactory(product=product, unconfirmed=True, confirmation_sent_at=timezone.now())
    subscribed = SubscriptionFactory(product=product)
    client = Client()
    confirm = _path(consent.confirm_url(subscription_id=pending.pk, issued_at=pending.confirmation_sent_at))
    unsubscribe = _path(consent.unsubscribe_url(subscription_id=subscribed.pk))

    pages = {
        link: [client.get(link, headers={"accept": _BROWSER}), client.get(link)] for link in (confirm, unsubscribe)
    }
    heads = [client.head(link) for link in (confirm, unsubscribe)]

    pending.refresh_from_db()
    subscribed.refresh_from_db()
    assert (pending.confirmed_at, pending.unsubscribed_at) == (None, None)
    assert (subscribed.unsubscribed_at, subscribed.notifiable) == (None, True)
    assert [response.status_code for response in heads] == [200, 200]
    assert all(response.content == b"" for response in heads)
    for answers in pages.values():
        for response in answers:
            assert response.status_code == 200
            assert response["Content-Type"].startswith("text/html")
            assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert response["Referrer-Policy"] == "no-referrer"
            html = response.content.decode()
            assert html.count("<form") == 1 and '<form method="post">' in html  # no action: the same address
            assert html.count("<button") == 1
            assert "&lt;b&gt;Tea &amp; co&lt;/b&gt;" in html and "<b>" not in html
            assert "<script" not in html and "src=" not in html and "href=" not in html
    assert 'name="List-Unsubscribe" value="One-Click"' in pages[unsubscribe][0].content.decode()


@pytest.mark.django_db
def test_posting_acts_idempotently_json_for_clients_a_page_for_the_browser_form():
    """Given an unconfirmed subscription, when its confirmation link is POSTed twice, then both answer 200 and
    it is confirmed once; the browser's form post (``Accept: text/html``, a client that enforces CSRF, no token)
    gets a page, an API client ``{"detail"}``. When its unsubscribe link gets RFC 8058's one-click POST twice
    (form-encoded ``List-Unsubscribe=One-Click``, no ``Accept``), both answer 200 JSON and it is unsubscribed."""
    subscription = SubscriptionFactory(unconfirmed=True, confirmation_sent_at=timezone.now())
    link = _path(consent.confirm_url(subscription_id=subscription.pk, issued_at=subscription.confirmation_sent_at))
    browser = Client(enforce_csrf_checks=True)

    first = browser.post(link, headers={"accept": _BROWSER})
    second = Client().post(link)

    assert (first.status_code, second.status_code) == (200, 200)
    assert first["Content-Type"].startswith("text/html") and "Subscription confirmed" in first.content.decode()
    assert first["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert set(second.json()) == {"detail"} and "confirmed" in second.json()["detail"]
    subscription.refresh_from_db()
    confirmed_at = subscription.confirmed_at
    assert confirmed_at is not None and subscription.notifiable

    unsubscribe = _path(consent.unsubscribe_url(subscription_id=subscription.pk))
    one_click = {"data": "List-Unsubscribe=One-Click", "content_type": "application/x-www-form-urlencoded"}
    answers = [browser.post(unsubscribe, **one_click), browser.post(unsubscribe, **one_click)]

    assert [response.status_code for response in answers] == [200, 200]
    assert all(response.json() == answers[0].json() for response in answers)
    subscription.refresh_from_db()
    assert subscription.unsubscribed_at is not None and not subscription.notifiable
    assert subscription.confirmed_at == confirmed_at
    page = browser.get(unsubscribe, headers={"accept": _BROWSER})
    assert page.status_code == 200 and "already unsubscribed" in page.content.decode()


@pytest.mark.django_db
def test_another_method_on_a_link_is_a_json_405():
    subscription = SubscriptionFactory()
    response = Client().put(_path(consent.unsubscribe_url(subscription_id=subscription.pk)))

    assert response.status_code == 405 and set(response.json()) == {"detail"}
    assert set(response["Allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}
    assert Subscription.objects.get(pk=subscription.pk).notifiable


@pytest.mark.django_db
def test_expired_tampered_and_superseded_links_are_400_and_change_nothing(monkeypatch, settings):
    """A confirmation link older than ``SUBSCRIPTION_CONFIRM_MAX_AGE_SECONDS``, one with its signature altered,
    one forged for another subscription, an unsubscribe link altered, and a confirmation link issued before the
    subscriber unsubscribed: each is 400 with a ``detail`` saying why, on GET and on POST (a page saying it to a
    browser), and no subscription changes."""
    subscription = SubscriptionFactory(unconfirmed=True, confirmation_sent_at=timezone.now())
    other = SubscriptionFactory(unconfirmed=True)
    client = Client()
    with monkeypatch.context() as patch:
        old = int(time.time()) - settings.SUBSCRIPTION_CONFIRM_MAX_AGE_SECONDS - 60
        patch.setattr(signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(old))
        expired = consent.confirm_url(subscription_id=subscription.pk, issued_at=subscription.confirmation_sent_at)
    valid = consent.confirm_url(subscription_id=subscription.pk, issued_at=subscription.confirmation_sent_at)
    tampered = valid[:-2] + ("AA" if not valid.endswith("AA") else "BB")
    forged = signing.dumps({"s": other.pk, "t": 0}, salt="wrong salt")
    unsubscribe = consent.unsubscribe_url(subscription_id=subscription.pk)
    links = {
        "expired": _path(expired),
        "tampered": _path(tampered),
        "forged": f"/api/subscriptions/confirm/{forged}",
        "unsubscribe tampered": _path(unsubscribe).replace(":", ":x", 1),
        "unsubscribe of another id": _path(unsubscribe).replace(f"/{subscription.pk}:", f"/{other.pk}:"),
    }

    for method in (client.get, client.post):
        answers = {name: method(link) for name, link in links.items()}
        assert {name: response.status_code for name, response in answers.items()} == dict.fromkeys(answers, 400)
        assert "expired" in answers["expired"].json()["detail"]
        assert all(set(response.json()) == {"detail"} for response in answers.values())
        page = method(links["expired"], headers={"accept": _BROWSER})
        assert page.status_code == 400 and "This confirmation link has expired" in page.content.decode()
        assert "<form" not in page.content.decode()
    assert client.head(links["tampered"]).status_code == 400
    assert not Subscription.objects.filter(confirmed_at__isnull=False).exists()
    assert not Subscription.objects.filter(unsubscribed_at__isnull=False).exists()

    # A link mailed before an unsubscribe does not undo it, and its page says so.
    assert client.post(_path(valid)).status_code == 200
    assert client.post(_path(unsubscribe)).status_code == 200
    for method in (client.get, client.post):
        superseded = method(_path(valid))
        assert superseded.status_code == 400 and "unsubscribed" in superseded.json()["detail"]
    assert Subscription.objects.get(pk=subscription.pk).unsubscribed_at is not None


#: Tokens nobody was mailed: not signed, signed by another key's shape, huge, not ASCII, control characters,
#: percent-encoded bytes that are no UTF-8, what a path converter might choke on.
HOSTILE_TOKENS = [
    "x",
    ":",
    "::::",
    "1:",
    ":1",
    "a" * 5000,
    "9" * 400 + ":" + "A" * 43,
    "%00",
    "%ff%fe",
    "%C3%BC%E2%80%AE",
    "..",
    "%2e%2e",
    "%0d%0aSet-Cookie:%20x=1",
    "eyJzIjoxfQ:1abc:def",
    ".eJyrVkrOzytJzSsBAA",
    "{}",
    "%22%3Cscript%3E",
]


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["confirm", "unsubscribe"])
def test_hostile_tokens_on_either_link_are_400_never_a_500(route):
    """The links are plain Django views outside the OpenAPI document (schemathesis does not fuzz them): any
    token in their address, however malformed, is a 400 with the JSON error (or the page), on every method the
    link serves, and changes nothing. A token signed with the real key naming an id no row can have (beyond
    bigint) is no 500 either: the confirmation link a 400, the unsubscribe link the 200 of an address that is
    not subscribed (as for a deleted subscription)."""
    subscription = SubscriptionFactory(unconfirmed=True, confirmation_sent_at=timezone.now())
    out_of_range = (
        consent.confirm_url(subscription_id=10**30, issued_at=timezone.now())
        if route == "confirm"
        else consent.unsubscribe_url(subscription_id=10**30)
    )
    client = Client(raise_request_exception=False)
    for token in [*HOSTILE_TOKENS, _path(out_of_range).rpartition("/")[2]]:
        link = f"/api/subscriptions/{route}/{token}"
        answers = {
            "GET": client.get(link),
            "HEAD": client.head(link),
            "POST": client.post(link),
            "page": client.get(link, headers={"accept": _BROWSER}),
        }
        expected = 200 if token not in HOSTILE_TOKENS and route == "unsubscribe" else 400
        assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(answers, expected)
        assert set(answers["POST"].json()) == {"detail"}, token
    refreshed = Subscription.objects.get(pk=subscription.pk)
    assert (refreshed.confirmed_at, refreshed.unsubscribed_at) == (None, None)


@pytest.mark.django_db
def test_only_confirmed_subscriptions_still_subscribed_are_queued():
    """Given a promo's product with a confirmed, an unconfirmed and an unsubscribed subscription, when its
    fan-out runs, then only the confirmed one gets a notification row."""
    from promotions.fanout import promos_fan_out

    promo = PromoFactory(status="active", starts_at=timezone.now() - timedelta(seconds=5))
    confirmed = SubscriptionFactory(product=promo.product)
    SubscriptionFactory(product=promo.product, unconfirmed=True)
    SubscriptionFactory(product=promo.product, unsubscribed_at=timezone.now())

    run = promos_fan_out(promo_ids=[promo.pk], now=timezone.now(), on_batch=lambda batch: None, budget_seconds=60)
    assert run.queued == 1
    assert list(Notification.objects.values_list("subscription_id", flat=True)) == [confirmed.pk]


@pytest.mark.django_db
def test_the_request_confirmation_command_asks_each_unconfirmed_address_once(django_capture_on_commit_callbacks):
    """Subscriptions that predate consent (unconfirmed after the migration): ``subscriptions request-confirmation``
    asks each address once - two products of one address make one request - and leaves confirmed and
    unsubscribed ones alone; ``--dry-run`` publishes nothing."""
    products = ProductFactory.create_batch(2)
    for product in products:
        SubscriptionFactory(product=product, email="old@example.com", unconfirmed=True)
    SubscriptionFactory(product=products[0], email="other@example.com", unconfirmed=True)
    SubscriptionFactory(product=products[0])
    SubscriptionFactory(product=products[0], unsubscribed_at=timezone.now(), unconfirmed=True)

    with django_capture_on_commit_callbacks(execute=False) as published:
        call_command("subscriptions", "request-confirmation", "--dry-run", stdout=StringIO())
    assert not published
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False) as published:
        call_command("subscriptions", "request-confirmation", stdout=out)

    assert len(published) == 2
    assert out.getvalue().startswith("2 confirmation request(s) published for 3 unconfirmed subscription(s)")


# --- End to end: a real worker, the local SMTP server --------------------------------------------------------


@pytest.fixture
def sink(smtp_sink):
    smtp_sink.clear()
    return smtp_sink


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_worker")
def test_the_probe_300_third_party_addresses_are_mailed_no_promo_only_one_confirmation_request(sink, settings):
    """The probe: one client subscribes 300 third-party addresses, twice. Each address gets exactly one message,
    a confirmation request; the promo that then goes live queues no notification for any of them. With the
    throttles off: consent bounds what an address is sent whatever the rate limits let through."""
    framework = dict(settings.REST_FRAMEWORK)
    framework["DEFAULT_THROTTLE_RATES"] = dict.fromkeys(framework["DEFAULT_THROTTLE_RATES"])
    settings.REST_FRAMEWORK = framework
    product = ProductFactory()
    client = APIClient()
    addresses = [f"victim{n}@example.org" for n in range(300)]

    for _ in range(2):
        assert {_subscribe(client, product.pk, address).status_code for address in addresses} == {202}

    wait_for(lambda: len(sink.messages) >= 300, what="300 confirmation requests")
    promo = PromoFactory(product=product, starts_at=timezone.now() - timedelta(seconds=1))
    assert check_active_promos.delay().get(timeout=RESULT_TIMEOUT)["activated"] == 1
    wait_for(lambda: Notification.objects.filter(promo=promo).exists() or _queued(promo.pk), what="the fan-out")

    assert not Notification.objects.exists()
    with sink.lock:
        recipients = [str(m["To"]) for m in sink.messages]
        subjects = {str(m["Subject"]) for m in sink.messages}
    assert sorted(recipients) == sorted(addresses)  # one each, none twice
    assert subjects == {f"Confirm your subscription to {product.name}"}


def _queued(promo_id: int) -> bool:
    from promotions.models import FlashPromo

    return FlashPromo.objects.filter(pk=promo_id, notifications_queued=True).exists()


@pytest.mark.django_db(transaction=True)
def test_a_subscriber_is_notified_after_confirming_and_every_email_can_be_unsubscribed_in_one_click(
    sink, celery_worker
):
    """Given an address that subscribes, when it follows the link of the confirmation request it received, then
    the next promo reaches it, with ``List-Unsubscribe: <link>``, ``List-Unsubscribe-Post:
    List-Unsubscribe=One-Click`` and the same link in the body; the one-click POST to it unsubscribes. The
    address is in no worker log line."""
    product = ProductFactory()
    client = APIClient()
    assert _subscribe(client, product.pk, "ann@example.net").status_code == 202
    wait_for(lambda: _messages_to(sink, "ann@example.net"), what="the confirmation request")
    (request,) = _messages_to(sink, "ann@example.net")
    (confirm,) = _LINK.findall(_body(request))
    assert "List-Unsubscribe" not in request  # it is not subscribed yet: nothing to leave

    page = client.get(_path(confirm), headers={"accept": _BROWSER})  # what a link scanner does too
    assert page.status_code == 200 and '<form method="post">' in page.content.decode()
    assert not Subscription.objects.get(email="ann@example.net").notifiable
    assert client.post(_path(confirm), headers={"accept": _BROWSER}).status_code == 200  # its button
    promo = PromoFactory(product=product, starts_at=timezone.now() - timedelta(seconds=1))
    check_active_promos.delay().get(timeout=RESULT_TIMEOUT)
    wait_for(lambda: len(_messages_to(sink, "ann@example.net")) == 2, what="the promo's email")

    email = _messages_to(sink, "ann@example.net")[1]
    assert str(email["Subject"]).startswith(f"20% off {product.name}")
    unsubscribe = _header(email, "List-Unsubscribe")
    assert re.fullmatch(r"<https?://\S+/api/subscriptions/unsubscribe/\S+>", unsubscribe)
    assert _header(email, "List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert _LINK.findall(_body(email)) == [unsubscribe[1:-1]]
    # The sink has the message once the SMTP transaction ends; the worker records it sent right after.
    wait_for(
        lambda: Notification.objects.get(promo=promo).status == NotificationStatus.SENT, what="the row marked sent"
    )

    assert client.get(_path(unsubscribe[1:-1])).status_code == 200  # a scanner following the body link
    assert Subscription.objects.get(email="ann@example.net").notifiable
    response = client.post(
        _path(unsubscribe[1:-1]), data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 200
    assert not Subscription.objects.get(email="ann@example.net").notifiable
    assert "ann@example.net" not in celery_worker.log()


@pytest.mark.django_db(transaction=True)
def test_notifications_pending_when_a_subscriber_unsubscribes_are_never_sent(sink, celery_worker):
    """Given an active promo with two subscribers' notifications pending, when one unsubscribes with the
    one-click POST - and a fan-out that read the subscription before that writes one more row for it - then a
    delivery batch run by the worker sends only the other's: the unsubscribed rows are ``failed`` with
    ``the subscriber unsubscribed``, never handed to the channel (the late one counted in the claim's log line)."""
    promo = PromoFactory(status="active", starts_at=timezone.now() - timedelta(minutes=1))
    stays, leaves = SubscriptionFactory.create_batch(2, product=promo.product)
    for subscription in (stays, leaves):
        Notification.objects.create(promo=promo, subscription=subscription, next_attempt_at=timezone.now())
    client = APIClient()

    assert client.post(_path(consent.unsubscribe_url(subscription_id=leaves.pk))).status_code == 200
    late = PromoFactory(product=promo.product, status="active", starts_at=timezone.now() - timedelta(minutes=1))
    Notification.objects.create(promo=late, subscription=leaves, next_attempt_at=timezone.now())
    summary = deliver_notification_batch.apply_async(ignore_result=False).get(timeout=RESULT_TIMEOUT)

    assert summary == {"claimed": 1, "sent": 1, "retrying": 0, "failed": 0}
    rows = Notification.objects.filter(subscription=leaves)
    assert set(rows.values_list("status", "last_error")) == {(NotificationStatus.FAILED, consent.UNSUBSCRIBED)}
    assert Notification.objects.get(subscription=stays).status == NotificationStatus.SENT
    with sink.lock:
        assert [str(m["To"]) for m in sink.messages] == [stays.email]
    wait_for(lambda: '"notifications.unsubscribed_skipped"' in celery_worker.log(), what="the claim's line")


def test_an_sns_notification_carries_its_unsubscribe_link_as_a_message_attribute(settings):
    """SNS has no headers: the link rides as the ``unsubscribe_url`` message attribute, for the topic's
    subscribers to deliver (checked at the SDK's boundary with botocore's Stubber: no AWS call is made)."""
    from botocore.stub import Stubber

    from promotions.channels import OutgoingMessage, SnsBackend

    settings.SNS_TOPIC_ARN = "arn:aws:sns:us-east-1:000000000000:flash-promos"
    backend = SnsBackend()
    link = "https://promos.example.com/api/subscriptions/unsubscribe/7:abc"
    message = OutgoingMessage(1, "key-1", "ann@example.com", "20% off", "body", unsubscribe_url=link)
    with Stubber(backend._client) as stub:
        stub.add_response(
            "publish",
            {"MessageId": "m-1"},
            {
                "TopicArn": settings.SNS_TOPIC_ARN,
                "Subject": "20% off",
                "Message": "body",
                "MessageAttributes": {
                    "recipient": {"DataType": "String", "StringValue": "ann@example.com"},
                    "idempotency_key": {"DataType": "String", "StringValue": "key-1"},
                    "unsubscribe_url": {"DataType": "String", "StringValue": link},
                },
            },
        )
        assert list(backend.send([message])) == [(1, None)]
        stub.assert_no_pending_responses()
