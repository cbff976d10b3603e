from __future__ import annotations

from django.urls import path

from reports import views

app_name = "reports"

urlpatterns = [
    path("reports/", views.report_list, name="list"),
    path("reports/new/", views.report_new, name="new"),
    path("reports/<int:report_id>/", views.report_detail, name="detail"),
    path("reports/<int:report_id>/cancel/", views.report_cancel, name="cancel"),
    path("reports/<int:report_id>/download/", views.report_download, name="download"),
    path("reports/<int:report_id>/chart.png", views.report_chart, name="chart"),
    path("api/reports/", views.api_request_report, name="api-request"),
    path("api/reports/<int:report_id>/", views.api_report_detail, name="api-detail"),
    path("api/reports/<int:report_id>/cancel/", views.api_cancel_report, name="api-cancel"),
]
