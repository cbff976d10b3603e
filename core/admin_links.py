"""Admin links between domain objects and their Celery task results."""

from __future__ import annotations

from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django_celery_results.models import TaskResult


def task_result_links(task_ids: list[str]) -> dict[str, str]:
    """Map each task id that has a stored result to its admin change page."""
    found = TaskResult.objects.filter(task_id__in=[task_id for task_id in task_ids if task_id])
    return {
        row.task_id: reverse("admin:django_celery_results_taskresult_change", args=[row.pk])
        for row in found.only("pk", "task_id")
    }


def task_id_html(task_id: str, links: dict[str, str]) -> SafeString | str:
    """The task id, linked to its result when one is stored."""
    if not task_id:
        return "—"
    url = links.get(task_id)
    return format_html('<a href="{}">{}</a>', url, task_id) if url else task_id
