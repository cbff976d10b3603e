"""Staff view of reports: filters, chart thumbnails, downloads and a Regenerate action."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin_links import task_id_html, task_result_links
from core.formats import money
from reports.models import Report
from reports.services import requesting


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "kind",
        "status",
        "progress",
        "revenue",
        "thumbnail",
        "download",
        "requested_by",
        "finished_at",
    )
    list_filter = ("kind", "status", "period_start", "created_at")
    date_hierarchy = "period_start"
    search_fields = ("=id", "requested_by__username")
    actions = ("regenerate",)
    readonly_fields = (
        "kind", "period_start", "period_end", "status", "progress", "requested_by", "summary", "error",
        "thumbnail", "download", "task", "slices_total", "slices_done", "created_at", "started_at", "finished_at",
    )  # fmt: skip
    exclude = ("csv_file", "chart", "task_id")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # reports are requested at /reports/new/ or by beat

    @admin.display(description="revenue")
    def revenue(self, report: Report) -> str:
        return money(report.summary.get("revenue"), report.currency)

    @admin.display(description="chart")
    def thumbnail(self, report: Report) -> SafeString | str:
        if report.status != Report.Status.DONE or not report.chart:
            return "—"
        url = reverse("reports:chart", args=[report.pk])
        return format_html('<a href="{}"><img src="{}" alt="chart" style="height: 48px"></a>', url, url)

    @admin.display(description="CSV")
    def download(self, report: Report) -> SafeString | str:
        if report.status != Report.Status.DONE or not report.csv_file:
            return "—"
        return format_html('<a href="{}">download</a>', reverse("reports:download", args=[report.pk]))

    @admin.display(description="Celery task")
    def task(self, report: Report) -> SafeString | str:
        return task_id_html(report.task_id, task_result_links([report.task_id]))

    @admin.action(description="Regenerate", permissions=["change"])
    def regenerate(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        started = 0
        for report in queryset:
            if requesting.regenerate(report.pk, requested_by_id=request.user.pk).status == Report.Status.PENDING:
                started += 1
        self.message_user(
            request, f"Regenerating {started} report(s); the files are replaced when done.", messages.SUCCESS
        )
        if skipped := queryset.count() - started:
            self.message_user(request, f"Skipped {skipped} already being generated.", messages.WARNING)
