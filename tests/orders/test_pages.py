"""Customer pages: sign-up, my orders, the new-order form and the live order page."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from orders.models import Order
from tests.factories import UserFactory
from tests.orders.helpers import place, product

pytestmark = pytest.mark.django_db


def test_the_front_page_sends_visitors_to_log_in_and_customers_to_their_orders(customer_client) -> None:
    assert Client().get("/")["Location"] == "/accounts/login/"
    assert customer_client.get("/")["Location"] == "/orders/"


def test_order_pages_need_a_login(client) -> None:
    for path in ("/orders/", "/orders/new/", "/orders/1/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")


def test_sign_up_creates_a_customer_who_confirms_the_address_before_logging_in(client) -> None:
    response = client.post(
        "/accounts/signup/",
        {
            "username": "newbie",
            "email": "newbie@example.com",
            "password1": "a-long-passphrase-9",
            "password2": "a-long-passphrase-9",
        },
    )
    assert response["Location"] == "/accounts/signup/done/"
    assert client.get("/orders/").status_code == 302, "not logged in before confirming"
    user = get_user_model().objects.get(username="newbie")
    assert (user.email, user.is_active) == ("newbie@example.com", False)


def test_sign_up_rejects_bad_input_with_form_errors_and_creates_nobody(client) -> None:
    response = client.post(
        "/accounts/signup/",
        {"username": "x", "email": "not-an-address", "password1": "short", "password2": "different"},
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "email" in errors and "password2" in errors
    assert not get_user_model().objects.filter(username="x").exists()


def test_api_me_says_who_the_session_belongs_to_and_401_without_one(customer_client, customer) -> None:
    anonymous = Client().get("/api/me/")
    assert anonymous.status_code == 401 and "error" in anonymous.json()
    assert customer_client.get("/api/me/").json() == {
        "id": customer.pk,
        "username": customer.username,
        "email": customer.email,
        "is_staff": False,
    }
    assert customer_client.post("/api/me/").status_code in (403, 405)


def test_my_orders_lists_only_my_orders(customer_client, customer) -> None:
    mine = place(customer, (product(), 1))
    theirs = place(UserFactory(), (product(), 1))

    page = customer_client.get("/orders/")

    assert [order.pk for order in page.context["page"].object_list] == [mine.pk]
    assert f"#{theirs.pk}<" not in page.content.decode()


def test_the_new_order_form_places_an_order_and_opens_its_page(customer_client, customer) -> None:
    mug = product(stock=5)
    form = customer_client.get("/orders/new/").context["form"]
    key = form.initial["idempotency_key"]

    response = customer_client.post("/orders/new/", {f"qty_{mug.pk}": "2", "idempotency_key": key})
    again = customer_client.post("/orders/new/", {f"qty_{mug.pk}": "2", "idempotency_key": key})  # double submit

    order = Order.objects.get()
    assert response["Location"] == again["Location"] == f"/orders/{order.pk}/"
    assert (order.customer, order.lines.get().quantity) == (customer, 2)
    page = customer_client.get(f"/orders/{order.pk}/").content.decode()
    assert f'data-api="/api/orders/{order.pk}/"' in page


@pytest.mark.parametrize(
    ("quantity", "message"),
    [("0", "Choose a quantity for at least one product."), ("9", "Only 5 of"), ("-1", "greater than or equal to 0")],
)
def test_the_new_order_form_shows_errors_and_saves_nothing(customer_client, quantity: str, message: str) -> None:
    mug = product(stock=5)

    response = customer_client.post("/orders/new/", {f"qty_{mug.pk}": quantity, "idempotency_key": "k1"})

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Order.objects.exists()


def test_someone_elses_order_page_is_404(customer_client) -> None:
    order = place(UserFactory(), (product(), 1))
    assert customer_client.get(f"/orders/{order.pk}/").status_code == 404


def test_password_reset_pages_use_the_site_layout(client) -> None:
    page = client.get("/accounts/password_reset/").content.decode()
    assert "Reset your password" in page and "site.css" in page


def test_logging_in_and_out_works_with_csrf_on(customer) -> None:
    client = Client(enforce_csrf_checks=True)
    customer.set_password("pass-phrase-123")
    customer.save()
    client.get("/accounts/login/")
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/accounts/login/", {"username": customer.username, "password": "pass-phrase-123", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    assert client.get("/orders/").status_code == 200
    client.post("/accounts/logout/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    assert client.get("/orders/").status_code == 302
