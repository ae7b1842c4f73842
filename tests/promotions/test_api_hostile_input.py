"""Issue 21's hostile input: product names and promo titles refuse Unicode format characters (bidi
controls, zero-width characters, the BOM) and control characters, in the API (400 naming the field and the
character) and in the models' validators (so the admin refuses them too). A year-1 start is refused by
``test_api_updates.test_a_promo_in_year_9999_or_year_1_is_400``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from promotions.models import FlashPromo, Product
from tests.factories import ProductFactory, PromoFactory, promo_api_body

pytestmark = pytest.mark.django_db

INVISIBLE = {
    "right-to-left-override": "\u202e",
    "left-to-right-embedding": "\u202a",
    "first-strong-isolate": "\u2068",
    "pop-directional-isolate": "\u2069",
    "zero-width-space": "\u200b",
    "zero-width-joiner": "\u200d",
    "byte-order-mark": "\ufeff",
    "soft-hyphen": "\u00ad",
    "escape": "\x1b",
    "delete": "\x7f",
    "next-line": "\x85",
}


@pytest.mark.parametrize("char", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_titles_and_names_with_format_or_control_characters_are_400_on_that_field(staff_api, char):
    """Given a title or a name holding a bidi control, a zero-width character, a BOM or another control
    character, when it is posted, then 400 on that field naming the character, and nothing is created."""
    product = ProductFactory()

    product_response = staff_api.post("/api/products", {"name": f"Ket{char}tle", "price": "1.00"}, format="json")
    promo_response = staff_api.post(
        "/api/promos", {**promo_api_body(product), "title": f"50%{char} off"}, format="json"
    )
    patch_response = staff_api.patch(
        f"/api/promos/{PromoFactory(starts_at=timezone.now() + timedelta(hours=1)).pk}",
        {"title": f"Sa{char}le"},
        format="json",
    )

    assert (product_response.status_code, promo_response.status_code, patch_response.status_code) == (400, 400, 400)
    assert list(product_response.json()) == ["name"]
    assert list(promo_response.json()) == ["title"]
    assert list(patch_response.json()) == ["title"]
    assert f"U+{ord(char):04X}" in promo_response.json()["title"][0]
    assert Product.objects.count() == 2
    assert FlashPromo.objects.count() == 1


def test_the_models_refuse_format_characters_so_the_admin_does_too():
    """The models' validators (which the admin's forms run) refuse the same characters."""
    with pytest.raises(ValidationError) as product_error:
        Product(name="Kettle\u202e", price=1).full_clean()
    with pytest.raises(ValidationError) as promo_error:
        PromoFactory.build(product=ProductFactory(), title="\ufeffSale").full_clean()

    assert set(product_error.value.message_dict) == {"name"}
    assert set(promo_error.value.message_dict) == {"title"}


@pytest.mark.parametrize("title", ["Café -20 %", "Été ☀ soldes", "50% off 🎉", "Preis: 10 €", "עברית", "日本語"])
def test_visible_text_in_any_script_is_accepted(staff_api, title):
    """Letters, symbols and emoji of any script pass: only invisible and control characters are refused."""
    response = staff_api.post("/api/promos", {**promo_api_body(ProductFactory()), "title": title}, format="json")

    assert response.status_code == 201, response.json()
    assert response.json()["title"] == title
