"""Task results on django-celery-results' admin, with "Retry"; task runs and beat's heartbeat."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django_celery_results import admin as results_admin
from django_celery_results.models import TaskResult

from core.errors import FieldErrors
from ops import catalog, runs
from ops.admin.links import LINE_BREAK, result_search_url, task_links
from ops.models import BeatHeartbeat, TaskRun
from ops.publish import recorded_arguments


class ProjectTaskResultAdmin(results_admin.TaskResultAdmin):
    list_display = ("task_id", "task_name", "status", "date_done", "periodic_task_name", "about", "retries", "worker")
    actions = ("retry_selected",)
    fieldsets = (
        *results_admin.TaskResultAdmin.fieldsets,
        ("Links", {"fields": ("about", "arguments", "retry_of", "retried_as"), "classes": ("wide",)}),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # results are written by workers; a blank one made here had an empty task id

    def get_readonly_fields(self, request: HttpRequest, obj: TaskResult | None = None) -> list[str]:
        # The parent makes every model field read-only (results are records); add the computed ones.
        return [*super().get_readonly_fields(request, obj), "about", "arguments", "retry_of", "retried_as"]

    @admin.display(description="about")
    def about(self, result: TaskResult) -> SafeString | str:
        try:
            args, kwargs = recorded_arguments(result.task_args, result.task_kwargs)
        except ValueError:
            return "—"
        target = catalog.subject_of(result.task_name or "", args, kwargs)
        if target is None:
            return "—"
        meta = target._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[target.pk])
        return format_html('<a href="{}">{} #{}</a>', url, meta.verbose_name, target.pk)

    @admin.display(description="arguments (as sent)")
    def arguments(self, result: TaskResult) -> str:
        try:
            args, kwargs = recorded_arguments(result.task_args, result.task_kwargs)
        except ValueError:
            return "not recorded as JSON (cannot be retried)"
        return f"args {json.dumps(args)}, kwargs {json.dumps(kwargs)}"

    @admin.display(description="retry of")
    def retry_of(self, result: TaskResult) -> SafeString | str:
        run = (
            TaskRun.objects.filter(task_id=result.task_id, source=TaskRun.Source.RETRY)
            .select_related("requested_by")
            .first()
        )
        if run is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a> (retried by {} at {})',
            result_search_url(run.retry_of),
            run.retry_of,
            run.requested_by or "—",
            f"{run.requested_at:%Y-%m-%d %H:%M:%S}",
        )

    @admin.display(description="retried as")
    def retried_as(self, result: TaskResult) -> SafeString | str:
        retries = (
            TaskRun.objects.filter(retry_of=result.task_id).select_related("requested_by").order_by("requested_at")
        )
        if not retries:
            return "—"
        return format_html_join(
            LINE_BREAK,
            '<a href="{}">{}</a> by {} at {}',
            (
                (result_search_url(r.task_id), r.task_id, r.requested_by or "—", f"{r.requested_at:%Y-%m-%d %H:%M:%S}")
                for r in retries
            ),
        )

    @admin.display(description="retries")
    def retries(self, result: TaskResult) -> str:
        count = TaskRun.objects.filter(retry_of=result.task_id).count()
        return str(count) if count else ""

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(runs.RUN_PERMISSION)

    @admin.action(description="Retry selected (as new tasks)", permissions=["run"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[TaskResult]) -> None:
        sent = []
        for result in queryset:
            try:
                sent.append(runs.retry_result(result, user=request.user).task_id)
            except (runs.RetryRefused, FieldErrors) as exc:
                self.message_user(request, f"Not retried: {exc}", messages.ERROR)
        if sent:
            self.message_user(
                request, format_html("Retrying {} task(s): {}", len(sent), task_links(sent)), messages.SUCCESS
            )


admin.site.unregister(TaskResult)
admin.site.register(TaskResult, ProjectTaskResultAdmin)


@admin.register(TaskRun)
class TaskRunAdmin(admin.ModelAdmin):
    """Who ran or retried what, and when (read only)."""

    list_display = ("requested_at", "source", "task_name", "new_task", "retry_of", "periodic_task_name", "requested_by")
    list_filter = ("source", "task_name", "requested_at")
    search_fields = ("task_id", "retry_of", "task_name", "requested_by__username")
    readonly_fields = [field.name for field in TaskRun._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskRun | None = None) -> bool:
        return False

    @admin.display(description="new task")
    def new_task(self, run: TaskRun) -> SafeString:
        return task_links([run.task_id])


@admin.register(BeatHeartbeat)
class BeatHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("node", "role", "seen_at", "started_at")
    readonly_fields = ("node", "role", "seen_at", "started_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


# --- failures ---------------------------------------------------------------------------
