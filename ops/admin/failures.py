"""The failures page's rows (dismiss, replay) and the staff task API's audit."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ops import failures, runs
from ops.admin.links import task_links
from ops.models import Failure, TaskApiCall


def subject_url(label: str, pk: str) -> str | None:
    """The admin page of what a failed task worked on ("orders.Order", "42"), if the admin has one."""
    if not label or not pk:
        return None
    app_label, _, model = label.partition(".")
    try:
        return reverse(f"admin:{app_label}_{model.lower()}_change", args=[pk])
    except NoReverseMatch:
        return None


class DismissForm(forms.Form):
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), help_text="Why no replay is needed.")


@admin.register(Failure)
class FailureAdmin(admin.ModelAdmin):
    """Each failure, one by one; the grouped view is the failures page (/admin/ops/failures/)."""

    list_display = ("failed_at", "kind", "about", "label", "status", "task")
    list_filter = ("status", "task_name", "error_type", "failed_at")
    search_fields = ("=task_id", "=subject_id", "error", "label")
    date_hierarchy = "failed_at"
    actions = ("replay_selected", "dismiss_selected")
    readonly_fields = [field.name for field in Failure._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # failures are recorded by the result backend

    def has_delete_permission(self, request: HttpRequest, obj: Failure | None = None) -> bool:
        return False  # they expire after FAILURE_RETENTION; dismissing is how staff close one

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The failures page links to one group's failures.
        return lookup == "fingerprint" or super().lookup_allowed(lookup, value, request)

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(runs.RUN_PERMISSION)

    @admin.display(description="kind")
    def kind(self, failure: Failure) -> str:
        return failure.subject_label.partition(".")[2] or failure.task_name

    @admin.display(description="object")
    def about(self, failure: Failure) -> SafeString | str:
        url = subject_url(failure.subject_label, failure.subject_id)
        if url is None:
            return failure.subject_id or "—"
        return format_html('<a href="{}">{} #{}</a>', url, failure.subject_label.partition(".")[2], failure.subject_id)

    @admin.display(description="task")
    def task(self, failure: Failure) -> SafeString:
        return task_links([failure.task_id])

    @admin.action(description="Replay selected (through their domain's replay)", permissions=["run"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[Failure]) -> None:
        report_replay(request, failures.replay(queryset, user=request.user))

    @admin.action(description="Dismiss selected, with a note", permissions=["change"])
    def dismiss_selected(self, request: HttpRequest, queryset: QuerySet[Failure]) -> TemplateResponse | None:
        form = DismissForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            dismissed = failures.dismiss(queryset, user=request.user, note=form.cleaned_data["note"])
            self.message_user(request, f"Dismissed {dismissed} failure(s).", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Dismiss failures",
            "form": form,
            "failures": queryset,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/ops/failure/dismiss.html", context)


def report_replay(request: HttpRequest, outcome: failures.Replayed) -> None:
    """Tell staff what a replay did: the failures sent again, and each one that was refused with its reason."""
    if outcome.replayed:
        messages.success(request, f"Replaying {len(outcome.replayed)} failure(s).")
    for task_id, reason in outcome.refused.items():
        messages.error(
            request, f"Not replayed: {reason}" if task_id in reason else f"Not replayed: {task_id}: {reason}"
        )


@admin.register(TaskApiCall)
class TaskApiCallAdmin(admin.ModelAdmin):
    """The staff task API's audit: who looked at or stopped which task (read only)."""

    list_display = ("at", "action", "task", "actor", "outcome")
    list_filter = ("action", "at")
    search_fields = ("=task_id", "actor__username")
    readonly_fields = [field.name for field in TaskApiCall._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskApiCall | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TaskApiCall | None = None) -> bool:
        return False

    @admin.display(description="task")
    def task(self, call: TaskApiCall) -> SafeString:
        return task_links([call.task_id])
