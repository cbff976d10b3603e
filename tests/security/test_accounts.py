"""Sign-up that reveals nothing, reset links from SITE_URL, and limits on logins, resets and sign-ups."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client

from notifications.models import Notification
from tests.factories import UserFactory
from tests.support.servers import HttpSession, WebProcess

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def sign_up(client: Client, username: str, email: str):
    return client.post(
        "/accounts/signup/",
        {"username": username, "email": email, "password1": "a-long-passphrase-9", "password2": "a-long-passphrase-9"},
    )


# --- sign-up ----------------------------------------------------------------------------------


def test_signing_up_with_a_new_or_a_registered_address_answers_exactly_the_same(client) -> None:
    owner = UserFactory(email="taken@example.com")

    new = sign_up(Client(), "newbie", "new@example.com")
    taken = sign_up(Client(), "impostor", "TAKEN@example.com")

    assert (
        (new.status_code, new["Location"]) == (taken.status_code, taken["Location"]) == (302, "/accounts/signup/done/")
    )
    assert not get_user_model().objects.filter(username="impostor").exists()
    assert get_user_model().objects.get(username="newbie").is_active is False
    confirmation = Notification.objects.get(kind="email_confirmation")
    notice = Notification.objects.get(kind="signup_existing")
    assert confirmation.recipient == "new@example.com" and "/accounts/confirm/" in confirmation.body_text
    assert notice.recipient == owner.email and "/accounts/password_reset/" in notice.body_text
    assert Client().get("/accounts/signup/done/").status_code == 200


def test_a_new_account_cannot_log_in_until_its_address_is_confirmed(settings) -> None:
    settings.SITE_URL = "https://shop.example.com"
    sign_up(Client(), "newbie", "new@example.com")
    link = re.search(r"https://shop\.example\.com(/accounts/confirm/\S+/)", Notification.objects.get().body_text)[1]
    client = Client()

    assert client.post("/accounts/login/", {"username": "newbie", "password": "a-long-passphrase-9"}).status_code == 200
    shown = client.get(link)
    assert shown.status_code == 200 and "Confirm and log in" in shown.content.decode()
    assert get_user_model().objects.get(username="newbie").is_active is False, "opening the link confirms nothing"
    confirmed = client.post(link)
    assert confirmed.status_code == 302
    assert client.get("/api/me/").json()["username"] == "newbie"
    assert Client().post(link).status_code == 404, "a used link works once"


def test_signing_up_again_before_confirming_sends_a_fresh_link_for_the_same_account(settings) -> None:
    settings.PASSWORD_RESET_EMAIL_INTERVAL = timedelta(0)
    sign_up(Client(), "newbie", "new@example.com")
    sign_up(Client(), "newbie2", "new@example.com")

    assert get_user_model().objects.filter(email="new@example.com").count() == 1
    assert Notification.objects.filter(kind="email_confirmation", recipient="new@example.com").count() == 2


# --- password reset ---------------------------------------------------------------------------------


def test_reset_links_start_with_site_url_whatever_host_the_request_names(settings, customer) -> None:
    settings.SITE_URL = "https://shop.example.com"
    settings.ALLOWED_HOSTS = ["127.0.0.1", "evil.example.net"]

    Client().post("/accounts/password_reset/", {"email": customer.email}, headers={"host": "evil.example.net"})

    body = Notification.objects.get(kind="password_reset").body_text
    assert "https://shop.example.com/accounts/reset/" in body
    assert "evil.example.net" not in body


def test_one_address_gets_one_reset_email_per_interval_however_often_it_asks(settings, customer) -> None:
    settings.PASSWORD_RESET_RATE_LIMIT = None
    for _ in range(12):
        response = Client().post("/accounts/password_reset/", {"email": customer.email})
        assert response["Location"] == "/accounts/password_reset/done/"

    assert Notification.objects.filter(kind="password_reset").count() == 1


@pytest.mark.parametrize(
    ("path", "setting", "fields"),
    [
        ("/accounts/password_reset/", "PASSWORD_RESET_RATE_LIMIT", {"email": "someone@example.com"}),
        ("/accounts/signup/", "SIGNUP_RATE_LIMIT", {"username": "x"}),
    ],
)
def test_one_address_gets_a_few_reset_and_signup_requests_then_429(settings, path, setting, fields) -> None:
    setattr(settings, setting, (3, 3600))

    statuses = [Client(REMOTE_ADDR="203.0.113.9").post(path, fields).status_code for _ in range(4)]
    elsewhere = Client(REMOTE_ADDR="203.0.113.10").post(path, fields)

    assert statuses[:3] != [429] * 3 and statuses[3] == 429
    assert elsewhere.status_code != 429


def test_behind_a_trusted_proxy_the_limit_keys_on_the_address_the_proxy_saw(settings) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    settings.PASSWORD_RESET_RATE_LIMIT = (1, 3600)
    proxy = {"REMOTE_ADDR": "10.0.0.2"}

    first = Client(**proxy).post(
        "/accounts/password_reset/", {"email": "a@example.com"}, headers={"x-forwarded-for": "198.51.100.1"}
    )
    forged = Client(**proxy).post(
        "/accounts/password_reset/", {"email": "a@example.com"}, headers={"x-forwarded-for": "1.2.3.4, 198.51.100.1"}
    )
    other = Client(**proxy).post(
        "/accounts/password_reset/", {"email": "a@example.com"}, headers={"x-forwarded-for": "198.51.100.2"}
    )

    assert (first.status_code, forged.status_code, other.status_code) == (302, 429, 302)


# --- login lockouts ------------------------------------------------------------------------------------


def login(client: Client, path: str, username: str, password: str):
    return client.post(path, {"username": username, "password": password})


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_wrong_passwords_lock_the_account_out_for_that_address_even_for_the_right_password(settings, path) -> None:
    user = UserFactory(is_staff=True)
    client = Client(REMOTE_ADDR="203.0.113.9")

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert login(client, path, user.username, "wrong").status_code == 200
    assert login(client, path, user.username, "wrong").status_code == 429
    locked = login(client, path, user.username, PASSWORD)
    from_elsewhere = login(Client(REMOTE_ADDR="203.0.113.10"), path, user.username, PASSWORD)

    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    assert from_elsewhere.status_code == 302, "a lockout keys on username and address together"


def test_the_lockout_ends_after_the_cool_off(settings) -> None:
    settings.AXES_COOLOFF_TIME = timedelta(seconds=0)
    user = UserFactory()
    client = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        login(client, "/accounts/login/", user.username, "wrong")

    assert login(client, "/accounts/login/", user.username, PASSWORD).status_code == 302


def test_support_unlocks_an_account_in_the_admin(settings) -> None:
    call_command("setup_roles", verbosity=0)
    customer = UserFactory()
    locked_out = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        login(locked_out, "/accounts/login/", customer.username, "wrong")
    agent = UserFactory(is_staff=True)
    agent.groups.add(Group.objects.get(name="Support"))
    support = Client()
    support.force_login(agent)
    attempt = AccessAttempt.objects.get(username=customer.username)

    assert customer.username in support.get("/admin/axes/accessattempt/").content.decode()
    support.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})

    assert login(locked_out, "/accounts/login/", customer.username, PASSWORD).status_code == 302


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_against_gunicorn_with_two_workers_the_lockout_and_the_reset_limit_hold_across_processes(web_env) -> None:
    user = UserFactory()
    env = {**web_env, "LOGIN_FAILURE_LIMIT": "3", "PASSWORD_RESET_RATE_LIMIT": "4/h"}
    with WebProcess(env, workers=2) as web:
        web.wait_ready()
        statuses = []
        for _ in range(3):
            session = HttpSession(
                web.base_url, follow_redirects=False
            )  # a new connection each time: either worker may answer
            statuses.append(session.post_form("/accounts/login/", {"username": user.username, "password": "no"}).status)
        locked = HttpSession(web.base_url, follow_redirects=False).post_form(
            "/accounts/login/", {"username": user.username, "password": PASSWORD}
        )
        resets = [
            HttpSession(web.base_url, follow_redirects=False)
            .post_form("/accounts/password_reset/", {"email": user.email})
            .status
            for _ in range(5)
        ]
    assert statuses == [200, 200, 429], "the third failure locks, whichever worker counted the first two"
    assert locked.status == 429
    assert resets == [302, 302, 302, 302, 429]
    assert Notification.objects.filter(kind="password_reset").count() == 1
