"""Unsubscribe links (no login: the signed token is the authority) and campaign progress for staff."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from config.api import api_view, json_error
from notifications.models import Campaign
from notifications.services import campaigns, preferences


@csrf_exempt  # RFC 8058: mail clients POST here without cookies; the signed token authenticates it
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows a confirmation button (link scanners must not unsubscribe anyone); POST unsubscribes."""
    try:
        user = preferences.user_for_unsubscribe_token(token)
    except preferences.InvalidUnsubscribeLink as exc:
        return render(request, "notifications/unsubscribe.html", {"error": str(exc)}, status=404)
    preference = getattr(user, "email_preference", None)
    subscribed = preference is None or preference.unsubscribed_at is None
    if request.method == "POST":
        subscribed = request.POST.get("action") == "subscribe"
        preferences.set_marketing_subscription(user.pk, subscribed=subscribed)
        if request.POST.get("List-Unsubscribe") == "One-Click":
            return HttpResponse("Unsubscribed.", content_type="text/plain")
    return render(
        request,
        "notifications/unsubscribe.html",
        {"email": user.email, "subscribed": subscribed, "done": request.method == "POST"},
    )


@api_view(methods=("GET",), permission="notifications.view_campaign")
def api_campaign_progress(request: HttpRequest, campaign_id: int) -> HttpResponse:
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None:
        return json_error(404, "No such campaign.")
    return JsonResponse(campaigns.campaign_progress(campaign))
