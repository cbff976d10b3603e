"""URL routes for the whole site."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts import views as account_views
from accounts.forms import OutboxPasswordResetForm
from accounts.views import limit_posts_per_ip
from config import docs
from ops import views as ops_views

# JSON under /api/, Django's pages elsewhere (config/api.py).
handler400 = "config.api.bad_request"
handler403 = "config.api.permission_denied"
handler404 = "config.api.page_not_found"
# An error raised outside a view: 503 for a database or broker outage, else the 500 page (JSON on /api/).
handler500 = "core.unavailable.server_error"

urlpatterns = [
    path("", account_views.home, name="home"),
    path("admin/ops/overview/", admin.site.admin_view(ops_views.overview), name="ops-overview"),
    path("admin/ops/failures/", admin.site.admin_view(ops_views.failures_page), name="ops-failures"),
    path("admin/", admin.site.urls),
    path("health/live", ops_views.health_live, name="health-live"),
    path("health/", ops_views.health_ready, name="health"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("api/tasks/<str:task_id>/", ops_views.api_task, name="api-task"),
    path("api/schema/", docs.api_schema, name="api-schema"),
    path("docs/api/", docs.api_docs, name="api-docs"),
    path("accounts/signup/", account_views.signup, name="signup"),
    path("accounts/signup/done/", account_views.signup_done, name="signup_done"),
    path("accounts/confirm/<uidb64>/<token>/", account_views.confirm_email, name="confirm_email"),
    path("api/me/", account_views.api_me, name="api-me"),
    path(
        "accounts/password_reset/",
        limit_posts_per_ip("reset", "PASSWORD_RESET_RATE_LIMIT")(
            auth_views.PasswordResetView.as_view(form_class=OutboxPasswordResetForm)
        ),
        name="password_reset",
    ),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("orders.urls")),
    path("", include("notifications.urls")),
    path("", include("reports.urls")),
]
