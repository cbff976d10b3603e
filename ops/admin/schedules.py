"""Periodic tasks and their schedules, on django-celery-beat's admin: project tasks only, bound arguments, audited."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule
from django_celery_results.models import TaskResult

from core import json_input
from core.errors import FieldErrors
from ops import catalog, lateness, runs, schedule_audit, schedule_checks, schedule_info
from ops.admin.links import LINE_BREAK, result_url, task_links
from ops.models import ScheduleChange


class ProjectTaskSelect(beat_admin.TaskSelectWidget):
    def tasks_as_choices(self) -> tuple[tuple[str, str], ...]:
        names = list(catalog.project_tasks())
        return (("", ""), *zip(names, names, strict=True))


class ProjectTaskChoiceField(forms.ChoiceField):
    widget = ProjectTaskSelect

    def valid_value(self, value: str) -> bool:
        return value in catalog.project_tasks()


def crontab_in_words(crontab: CrontabSchedule) -> str:
    """cron-descriptor's English, or what is wrong with a row that does not parse (instead of a 500)."""
    return schedule_checks.crontab_problem(crontab) or crontab.human_readable


RUN_PERMISSION_NEEDED = (
    "Saving an enabled schedule runs a task, so it needs the 'Can run and retry tasks by hand' permission "
    "(ops.run_task). Save it disabled, or ask someone who has it."
)


class ProjectPeriodicTaskForm(beat_admin.PeriodicTaskForm):
    """django-celery-beat's form, with the task, its arguments, headers, schedule and queue checked before saving."""

    regtask = ProjectTaskChoiceField(label="Task (registered)", required=False)
    # Set per request by the admin (get_form): whether this user may save an enabled schedule.
    may_run_tasks = False

    def _clean_json_text(self, field: str) -> str:
        value = self.cleaned_data[field]
        problem = schedule_checks.json_field_problem(field, value)
        if problem:
            raise forms.ValidationError(problem)
        return value

    def clean_args(self) -> str:
        return self._clean_json_text("args")

    def clean_kwargs(self) -> str:
        return self._clean_json_text("kwargs")

    def clean_headers(self) -> str:
        return self._clean_json_text("headers")

    def clean(self) -> dict:
        data = super().clean()
        if data.get("enabled") and not self.may_run_tasks:
            self.add_error("enabled", RUN_PERMISSION_NEEDED)
        if data.get("crontab") and (problem := schedule_checks.crontab_problem(data["crontab"])):
            self.add_error("crontab", problem)
        if data.get("interval") and (problem := schedule_checks.interval_problem(data["interval"])):
            self.add_error("interval", problem)
        if self.errors.get("args") or self.errors.get("kwargs"):
            return data  # the JSON itself is wrong; that error says enough
        args, kwargs = json_input.loads(data.get("args") or "[]"), json_input.loads(data.get("kwargs") or "{}")
        try:
            catalog.validate(data.get("task") or "", args, kwargs, data.get("queue") or None)
        except FieldErrors as exc:
            for field, problems in exc.errors.items():
                for problem in problems:
                    self.add_error(field, problem)
        return data


class AuditedScheduleAdmin(admin.ModelAdmin):
    """Every save and delete of a schedule row leaves a ScheduleChange: who, when, each field's old and new value."""

    def save_model(self, request: HttpRequest, obj: Model, form: forms.ModelForm, change: bool) -> None:
        before = schedule_audit.snapshot(type(obj).objects.filter(pk=obj.pk).first()) if change else None
        super().save_model(request, obj, form, change)
        schedule_audit.record(obj, before, schedule_audit.snapshot(obj), actor=request.user, via="admin")

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        self._record_deletion(request, [obj])
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._record_deletion(request, list(queryset))
        super().delete_queryset(request, queryset)

    def _record_deletion(self, request: HttpRequest, rows: list[Model]) -> None:
        for obj in rows:
            # Deleting a shared interval or crontab deletes the periodic tasks that use it.
            dependants = list(obj.periodictask_set.all()) if hasattr(obj, "periodictask_set") else []
            for row in [*dependants, obj]:
                schedule_audit.record(row, schedule_audit.snapshot(row), None, actor=request.user, via="admin")


class ProjectPeriodicTaskAdmin(AuditedScheduleAdmin, beat_admin.PeriodicTaskAdmin):
    form = ProjectPeriodicTaskForm
    list_display = (
        "name",
        "enabled",
        "task",
        "schedule_in_words",
        "next_run",
        "last_run_at",
        "last_result",
        "on_time",
        "problem",
    )
    actions = ("enable_tasks", "disable_tasks", "toggle_tasks", "run_now")
    readonly_fields = (*beat_admin.PeriodicTaskAdmin.readonly_fields, "problem", "upcoming_runs", "recent_results")
    fieldsets = (
        (None, {"fields": ("problem",)}),
        *beat_admin.PeriodicTaskAdmin.fieldsets,
        ("History", {"fields": ("upcoming_runs", "recent_results"), "classes": ("wide",)}),
    )

    def get_form(self, request: HttpRequest, obj: PeriodicTask | None = None, **kwargs: Any) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, **kwargs)
        form.may_run_tasks = self.has_run_permission(request)  # a new class per request: safe to set
        return form

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        # The last result and the last success of each schedule, for its status and whether it is late.
        return lateness.annotate(super().get_queryset(request))

    @admin.display(description="problem")
    def problem(self, task: PeriodicTask) -> str:
        """What stops beat from running this row (beat skips it and /health/ lists it), or nothing."""
        if task.pk is None:
            return ""
        return schedule_checks.describe(schedule_checks.problems(task)) or ""

    @admin.display(description="schedule")
    def schedule_in_words(self, task: PeriodicTask) -> str:
        if schedule_checks.problems(task):
            return "— (broken)"
        return schedule_info.in_words(task)

    @admin.display(description="next run")
    def next_run(self, task: PeriodicTask) -> str:
        upcoming = schedule_info.next_runs(task, 1) if not schedule_checks.problems(task) else []
        return f"{upcoming[0]:%Y-%m-%d %H:%M:%S %Z}" if upcoming else "—"

    @admin.display(description="last result")
    def last_result(self, task: PeriodicTask) -> SafeString | str:
        if not getattr(task, "last_result_pk", None):
            return "—"
        return format_html('<a href="{}">{}</a>', result_url(task.last_result_pk), task.last_result_status)

    @admin.display(description="on time?")
    def on_time(self, task: PeriodicTask) -> SafeString | str:
        if not task.enabled or schedule_checks.problems(task):
            return "—"  # a broken row is not late: beat skips it, and its "problem" says why
        check = lateness.check_of(task)
        if not check.checked:
            return "not checked (solar schedule)"
        if not check.late:
            return "on time"
        return format_html(
            '<img src="{}" alt=""> <strong class="schedule-late" title="{}">late</strong> ({})',
            static("admin/img/icon-no.svg"),
            check.reason,
            check.cause,
        )

    @admin.display(description="next 5 runs")
    def upcoming_runs(self, task: PeriodicTask) -> SafeString | str:
        runs_at = schedule_info.next_runs(task, 5) if task.pk and not schedule_checks.problems(task) else []
        if not runs_at:
            return "—"
        return format_html_join(LINE_BREAK, "{}", ((f"{when:%a %Y-%m-%d %H:%M:%S %Z}",) for when in runs_at))

    @admin.display(description="last 10 results")
    def recent_results(self, task: PeriodicTask) -> SafeString | str:
        rows = (
            TaskResult.objects.filter(periodic_task_name=task.name).order_by("-date_created", "-id")[:10]
            if task.pk
            else []
        )
        if not rows:
            return "—"
        return format_html_join(
            LINE_BREAK,
            '<a href="{}">{}</a> {} {}',
            (
                (result_url(r.pk), r.status, f"{r.date_done or r.date_created:%Y-%m-%d %H:%M:%S}", r.task_id)
                for r in rows
            ),
        )

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(runs.RUN_PERMISSION)

    def has_enable_permission(self, request: HttpRequest) -> bool:
        """Enabling a schedule makes beat run its task: it needs both change and run."""
        return self.has_change_permission(request) and self.has_run_permission(request)

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        # django-celery-beat's own version puts every crontab's English on the page and
        # answered 500 when one row did not parse; this one says what is wrong with it.
        readable = {crontab.pk: crontab_in_words(crontab) for crontab in CrontabSchedule.objects.all()}
        extra_context = {**(extra_context or {}), "readable_crontabs": readable}
        return admin.ModelAdmin.changeform_view(self, request, object_id, form_url, extra_context)

    def crontab_translation(self, task: PeriodicTask) -> str:
        return crontab_in_words(task.crontab) if task.crontab_id else ""

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[PeriodicTask], enabled: bool | None) -> int:
        """Enable, disable (or with None toggle) the rows, one audited save each, in one transaction."""
        with transaction.atomic():
            rows = list(queryset.select_for_update(of=("self",)))
            for task in rows:
                before = schedule_audit.snapshot(task)
                task.enabled = (not task.enabled) if enabled is None else enabled
                task.save()  # PeriodicTask.save() tells beat the schedule changed
                schedule_audit.record(task, before, schedule_audit.snapshot(task), actor=request.user, via="admin")
        return len(rows)

    @admin.action(description="Enable selected tasks", permissions=["enable"])
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.message_user(request, f"Enabled {self._set_enabled(request, queryset, True)} task(s).", messages.SUCCESS)

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.message_user(request, f"Disabled {self._set_enabled(request, queryset, False)} task(s).", messages.SUCCESS)

    @admin.action(description="Toggle activity of selected tasks", permissions=["enable"])
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self.message_user(request, f"Toggled {self._set_enabled(request, queryset, None)} task(s).", messages.SUCCESS)

    @admin.action(description="Run selected tasks now", permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        sent = []
        for task in queryset:
            try:
                sent.append(runs.run_periodic_task_now(task, user=request.user).task_id)
            except FieldErrors as exc:
                self.message_user(request, f"{task.name}: {exc}", messages.ERROR)
        if sent:
            self.message_user(
                request, format_html("Sent {} task(s): {}", len(sent), task_links(sent)), messages.SUCCESS
            )


class SharedScheduleAdmin(AuditedScheduleAdmin):
    """Interval, crontab, solar and clocked rows are shared: show which tasks an edit changes, and guard those edits.

    Editing a schedule that an enabled task uses changes when that task runs, so it
    needs the run permission, like saving an enabled periodic task.
    """

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(used_by_count=Count("periodictask"))

    def get_form(self, request: HttpRequest, obj: Model | None = None, **kwargs: Any) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, **kwargs)
        may_run = request.user.has_perm(runs.RUN_PERMISSION)
        original_clean = form.clean

        def clean(self: forms.ModelForm) -> dict:
            data = original_clean(self)
            instance = self.instance
            if instance.pk and not may_run and instance.periodictask_set.filter(enabled=True).exists():
                self.add_error(
                    None, RUN_PERMISSION_NEEDED.replace("an enabled schedule", "a schedule enabled tasks use")
                )
            return data

        form.clean = clean
        return form

    @admin.display(description="used by", ordering="used_by_count")
    def used_by(self, schedule: IntervalSchedule | CrontabSchedule) -> str:
        if schedule.pk is None:
            return "no task"
        names = list(schedule.periodictask_set.order_by("name").values_list("name", flat=True)[:5])
        more = schedule.periodictask_set.count() - len(names)
        return ", ".join(names) + (f" and {more} more" if more > 0 else "") if names else "no task"

    @admin.display(description="used by")
    def used_by_warning(self, schedule: IntervalSchedule | CrontabSchedule) -> SafeString | str:
        """On the change page: every task that an edit here reschedules, linked."""
        if schedule.pk is None:
            return "—"
        tasks = list(schedule.periodictask_set.order_by("name"))
        if not tasks:
            return "No periodic task uses this schedule."
        links = format_html_join(
            ", ",
            '<a href="{}">{}</a>',
            ((reverse("admin:django_celery_beat_periodictask_change", args=[task.pk]), task.name) for task in tasks),
        )
        return format_html("{} — saving a change here reschedules all {} of them.", links, len(tasks))


CRONTAB_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week", "timezone")


class CheckedCrontabForm(forms.ModelForm):
    """A crontab must parse and must come round: minute -1 and 31 February are refused here, not in beat."""

    class Meta:
        model = CrontabSchedule
        fields = CRONTAB_FIELDS

    def clean(self) -> dict:
        data = super().clean()
        if not self.errors:
            candidate = CrontabSchedule(**{name: data.get(name) for name in CRONTAB_FIELDS})
            if problem := schedule_checks.crontab_problem(candidate):
                self.add_error(None, problem)
        return data


admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, ProjectPeriodicTaskAdmin)
for model in (IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule):
    admin.site.unregister(model)


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(SharedScheduleAdmin, beat_admin.IntervalScheduleAdmin):
    list_display = ("__str__", "used_by")
    fields = ("used_by_warning", "every", "period")
    readonly_fields = ("used_by_warning",)


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(SharedScheduleAdmin, beat_admin.CrontabScheduleAdmin):
    form = CheckedCrontabForm
    list_display = ("__str__", "in_words", "used_by")
    fields = (
        "used_by_warning",
        "in_words",
        "minute",
        "hour",
        "day_of_month",
        "month_of_year",
        "day_of_week",
        "timezone",
    )
    readonly_fields = ("used_by_warning", "in_words")

    @admin.display(description="in words")
    def in_words(self, crontab: CrontabSchedule) -> str:
        return crontab_in_words(crontab) if crontab.pk else "—"


@admin.register(SolarSchedule)
class SolarScheduleAdmin(SharedScheduleAdmin, beat_admin.SolarScheduleAdmin):
    pass


@admin.register(ClockedSchedule)
class ClockedScheduleAdmin(SharedScheduleAdmin, beat_admin.ClockedScheduleAdmin):
    pass


@admin.register(ScheduleChange)
class ScheduleChangeAdmin(admin.ModelAdmin):
    """The schedule audit trail: read only, and not deletable by anyone through the admin."""

    list_display = ("changed_at", "changed_by", "via", "action", "kind", "object_name", "fields_changed")
    list_filter = ("action", "kind", "via", "changed_at")
    search_fields = ("object_name", "changed_by__username")
    readonly_fields = [field.name for field in ScheduleChange._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ScheduleChange | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ScheduleChange | None = None) -> bool:
        return False

    @admin.display(description="fields")
    def fields_changed(self, change: ScheduleChange) -> str:
        if change.action != ScheduleChange.Action.CHANGED:
            return ", ".join(change.changes)
        return ", ".join(f"{name}: {old!r} → {new!r}" for name, (old, new) in change.changes.items())


# --- results ------------------------------------------------------------------------------
