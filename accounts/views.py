"""Sign-up and the session endpoint; login, logout and password reset are Django's own views (config/urls.py)."""

from __future__ import annotations

from django.contrib.auth import login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts.forms import SignUpForm
from config.api import api_view


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


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
