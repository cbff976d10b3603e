"""Sign-up and its confirmation, and the session endpoint; login, logout and password reset are Django's views."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts import services, throttle
from accounts.client_ip import client_ip
from accounts.forms import SignUpForm
from config.api import api_view

View = Callable[..., HttpResponse]


def limit_posts_per_ip(scope: str, setting: str) -> Callable[[View], View]:
    """At most the rate in settings.<setting> POSTs per client address; more get a 429 page that names no account."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            rate = getattr(settings, setting)
            if request.method == "POST" and rate is not None:
                count, seconds = rate
                if not throttle.hit(f"{scope}-ip:{client_ip(request)}", count, timedelta(seconds=seconds)):
                    response = render(request, "registration/too_many_requests.html", status=429)
                    response["Retry-After"] = str(seconds)
                    return response
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


@limit_posts_per_ip("signup", "SIGNUP_RATE_LIMIT")
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    """The same answer for a new address and a registered one: "check your email"."""
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        services.sign_up(
            username=form.cleaned_data["username"],
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password1"],
        )
        return redirect("signup_done")
    return render(request, "registration/signup.html", {"form": form})


def signup_done(request: HttpRequest) -> HttpResponse:
    return render(request, "registration/signup_done.html")


@require_http_methods(["GET", "POST"])
def confirm_email(request: HttpRequest, uidb64: str, token: str) -> HttpResponse:
    """GET shows a button (mail scanners open links; they must not confirm anything); POST confirms and logs in."""
    user = services.confirm_email(uidb64, token, activate=request.method == "POST")
    if user is None:
        return render(request, "registration/confirm_email.html", {"valid": False}, status=404)
    if request.method == "POST":
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/confirm_email.html", {"valid": True, "username": user.get_username()})


def home(request: HttpRequest) -> HttpResponse:
    """The front page sends customers to their orders and visitors to the login page."""
    if request.user.is_authenticated:
        return redirect("orders:list")
    return redirect("login")


@api_view(methods=("GET",))
def api_me(request: HttpRequest) -> HttpResponse:
    """GET /api/me/: who this session belongs to, so an API client can check its login (401 when it has none)."""
    user = request.user
    return JsonResponse(
        {"id": user.pk, "username": user.get_username(), "email": user.email, "is_staff": user.is_staff}
    )
