from __future__ import annotations

from django.urls import path

from notifications import views

app_name = "notifications"

urlpatterns = [
    path("unsubscribe/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("api/campaigns/<int:campaign_id>/", views.api_campaign_progress, name="api-campaign"),
]
