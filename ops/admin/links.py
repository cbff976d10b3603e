"""Links between admin pages: a result by id, the results of a task id."""

from __future__ import annotations

from django.urls import reverse
from django.utils.html import format_html_join
from django.utils.safestring import SafeString, mark_safe

LINE_BREAK = mark_safe("<br>")


def result_url(pk: int) -> str:
    return reverse("admin:django_celery_results_taskresult_change", args=[pk])


def result_search_url(task_id: str) -> str:
    """The result list narrowed to one task id (its result appears once the task has run)."""
    return f"{reverse('admin:django_celery_results_taskresult_changelist')}?q={task_id}"


def task_links(task_ids: list[str]) -> SafeString:
    return format_html_join(", ", '<a href="{}">{}</a>', ((result_search_url(i), i) for i in task_ids))


# --- schedules -------------------------------------------------------------------------
