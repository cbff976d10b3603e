"""Health checks for load balancers and compose, Prometheus metrics, and the operations overview for staff."""

from __future__ import annotations

import hmac
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.admin import site as admin_site
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_celery_beat.models import PeriodicTask
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from config.api import api_view, json_error
from core.errors import Refused
from ops import census, health, lateness, runs, task_stats
from ops.metrics import BackofficeCollector

OPERATIONS_PERMISSION = "ops.view_operations"


@never_cache
@require_GET
def health_live(request: HttpRequest) -> HttpResponse:
    """Liveness: the web process answers. Cheap: touches nothing else."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def health_ready(request: HttpRequest) -> HttpResponse:
    """Readiness: database, broker, workers, beat and schedules. 200 when all are healthy, else 503 naming what is not.

    Open to anyone (load balancers and compose ask it), so anyone gets the status,
    the names of failing parts and of warnings only. Queue depths, worker host
    names, beat's host:pid and raw error texts help an attacker map the system;
    they go to staff with the operations permission and to METRICS_TOKEN. Late
    schedules are a warning, never a 503.
    """
    parts = health.readiness()
    failing = [name for name, part in parts.items() if not part.ok]
    # Late schedules are reported, not failed on: a late report must not take web out of service.
    schedules = lateness.health_part()
    body: dict[str, object] = {
        "status": "ok" if not failing else "unhealthy",
        "failing": failing,
        "warnings": [] if schedules.ok else ["schedules"],
    }
    if may_see_operations(request):
        body["checks"] = {**{name: part.as_json() for name, part in parts.items()}, "schedules": schedules.as_json()}
    return JsonResponse(body, status=503 if failing else 200)


def _has_metrics_token(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def may_see_operations(request: HttpRequest) -> bool:
    """A session with the operations permission, or the METRICS_TOKEN bearer token."""
    return request.user.has_perm(OPERATIONS_PERMISSION) or _has_metrics_token(request)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; needs METRICS_TOKEN as a bearer token, or a session with the operations permission."""
    if not may_see_operations(request):
        if request.user.is_authenticated:
            return json_error(403, f"This needs the {OPERATIONS_PERMISSION!r} permission, or METRICS_TOKEN.")
        response = json_error(
            401, "Send METRICS_TOKEN as 'Authorization: Bearer <token>', or log in with the operations permission."
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackofficeCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def overview(request: HttpRequest) -> HttpResponse:
    """Admin page: health, queues and their workers, beat, late schedules, per-task figures and the last day's failures.

    What the Grafana dashboard shows, for a shop that runs no Prometheus.
    """
    from ops.models import BeatHeartbeat

    if not request.user.has_perm(OPERATIONS_PERMISSION):
        raise PermissionDenied(f"The operations overview needs the {OPERATIONS_PERMISSION!r} permission.")
    workers = census.recent()
    parts = health.readiness(workers)
    since = (timezone.now() - timedelta(hours=24)).strftime("%Y-%m-%d %H:%M:%S")
    results_url = reverse("admin:django_celery_results_taskresult_changelist")
    failures = [
        (name, count, f"{results_url}?status__exact=FAILURE&task_name__exact={name}&date_done__gte={since}")
        for name, count in health.failures_since(24)
    ]
    depths = parts["broker"].data.get("queues", {})
    consumers = workers.workers_per_queue()
    tasks, answered = task_stats.from_workers()
    checks = lateness.schedule_checks()
    context = {
        **admin_site.each_context(request),
        "title": "Operations overview",
        "parts": parts,
        "queues": [(queue, depths.get(queue), consumers.get(queue, 0)) for queue in consumers],
        "workers_age": round(workers.age_seconds()),
        "beats": BeatHeartbeat.objects.all()[:10],
        "late_schedules": [check for check in checks if check.late],
        "on_time_schedules": sum(1 for check in checks if not check.late),
        "disabled_schedules": PeriodicTask.objects.filter(enabled=False).order_by("name"),
        "tasks": tasks,
        "workers_answered": answered,
        "failures": failures,
        "all_failures_url": f"{results_url}?status__exact=FAILURE&date_done__gte={since}",
    }
    return TemplateResponse(request, "admin/ops/overview.html", context)


FAILURES_VIEW_PERMISSION = "ops.view_failure"
FAILURES_DISMISS_PERMISSION = "ops.change_failure"


def failures_page(request: HttpRequest) -> HttpResponse:
    """Admin page /admin/ops/failures/: open failures grouped by what went wrong; replay or dismiss a whole group."""
    from ops import failures
    from ops.admin.failures import DismissForm, report_replay, subject_url
    from ops.models import Failure

    if not request.user.has_perm(FAILURES_VIEW_PERMISSION):
        raise PermissionDenied("Seeing failures needs the 'Can view failure' permission.")
    if request.method == "POST":
        group = Failure.objects.filter(fingerprint=request.POST.get("fingerprint", ""))
        if request.POST.get("action") == "replay":
            if not request.user.has_perm(runs.RUN_PERMISSION):
                raise PermissionDenied("Replaying needs the 'Can run and retry tasks by hand' permission.")
            report_replay(request, failures.replay(group, user=request.user))
        elif request.POST.get("action") == "dismiss":
            if not request.user.has_perm(FAILURES_DISMISS_PERMISSION):
                raise PermissionDenied("Dismissing needs the 'Can change failure' permission.")
            form = DismissForm(request.POST)
            if form.is_valid():
                dismissed = failures.dismiss(group, user=request.user, note=form.cleaned_data["note"])
                messages.success(request, f"Dismissed {dismissed} failure(s).")
            else:
                messages.error(request, "Say why these failures need no replay: the note is required.")
        else:
            return HttpResponseBadRequest("Unknown action.")
        return redirect("ops-failures")
    list_url = reverse("admin:ops_failure_changelist")
    groups = [
        {
            "group": group,
            "list_url": f"{list_url}?fingerprint={group.fingerprint}&status__exact=open",
            "objects": [(label, pk, subject_url(label, pk)) for label, pk in group.objects],
        }
        for group in failures.groups()
    ]
    context = {
        **admin_site.each_context(request),
        "title": "Failures",
        "groups": groups,
        "open_count": sum(item["group"].count for item in groups),
        "list_url": list_url,
        "can_replay": request.user.has_perm(runs.RUN_PERMISSION),
        "can_dismiss": request.user.has_perm(FAILURES_DISMISS_PERMISSION),
        "retention_days": settings.FAILURE_RETENTION.days,
    }
    return TemplateResponse(request, "admin/ops/failures.html", context)


MAX_TASK_ID_LENGTH = 255


@never_cache
@api_view(methods=("GET", "DELETE"), permission=OPERATIONS_PERMISSION)
def api_task(request: HttpRequest, task_id: str) -> HttpResponse:
    """GET /api/tasks/<id>/: a task's state, progress, result or error and subject. DELETE: stop it. Audited."""
    from ops import task_api

    if len(task_id) > MAX_TASK_ID_LENGTH or not task_id.isprintable():
        return json_error(400, errors={"task_id": [f"A task id has 1 to {MAX_TASK_ID_LENGTH} printable characters."]})
    if request.method == "GET":
        return JsonResponse(task_api.describe(task_id, user=request.user))
    if not request.user.has_perm(runs.RUN_PERMISSION):
        return json_error(403, f"Stopping a task needs the {runs.RUN_PERMISSION!r} permission too.")
    try:
        stopped = task_api.stop(task_id, user=request.user)
    except Refused as exc:
        return json_error(409, str(exc))
    return JsonResponse({"id": task_id, "state": stopped.state, "outcome": stopped.outcome}, status=202)
