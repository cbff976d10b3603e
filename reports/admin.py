"""Staff view of reports: filters, chart thumbnails, downloads, their slices, and the Regenerate and Cancel actions."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin_links import task_id_html, task_result_links
from core.errors import Refused
from core.formats import money
from reports.models import Report, ReportSlice
from reports.services import cancelling, requesting


class ReportSliceInline(admin.TabularInline):
    model = ReportSlice
    fields = (
        "period_start",
        "period_end",
        "status",
        "attempts",
        "lease_owner",
        "lease_expires_at",
        "last_error",
        "finished_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


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
    actions = ("regenerate", "cancel")
    inlines = (ReportSliceInline,)
    readonly_fields = (
        "kind",
        "period_start",
        "period_end",
        "status",
        "progress",
        "requested_by",
        "summary",
        "error",
        "thumbnail",
        "download",
        "task",
        "slices_total",
        "slices_done",
        "attempts",
        "finish_attempts",
        "lease_owner",
        "lease_expires_at",
        "queued_at",
        "cancelled_by",
        "created_at",
        "started_at",
        "finished_at",
    )
    exclude = ("csv_file", "chart", "task_id", "chord_id")

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

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("reports.cancel_report")

    @admin.action(description="Regenerate", permissions=["change"])
    def regenerate(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        started, busy = 0, []
        for report in queryset:
            if requesting.regenerate(report.pk, requested_by_id=request.user.pk):
                started += 1
            else:
                busy.append(str(report))
        if started:
            self.message_user(
                request, f"Regenerating {started} report(s); the files are replaced when done.", messages.SUCCESS
            )
        if busy:
            self.message_user(
                request,
                f"Nothing sent for {len(busy)} report(s) still pending or running ({', '.join(busy)}): cancel them "
                "first, or let the sweep re-send them if they are stuck.",
                messages.WARNING,
            )

    @admin.action(description="Cancel selected reports", permissions=["cancel"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        cancelled, refused = 0, []
        for report in queryset:
            try:
                cancelling.cancel_report(report.pk, actor_id=request.user.pk)
                cancelled += 1
            except Refused as exc:
                refused.append(str(exc))
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} report(s); their slices stop.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)
