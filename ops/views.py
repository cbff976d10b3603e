"""Health checks for load balancers and compose, Prometheus metrics, and the operations overview for staff."""

from __future__ import annotations

import hmac
from datetime import timedelta

from django.conf import settings
from django.contrib.admin import site as admin_site
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_celery_beat.models import PeriodicTask
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from config.api import json_error
from ops import census, health, lateness, task_stats
from ops.metrics import BackofficeCollector


@never_cache
@require_GET
def health_live(request: HttpRequest) -> HttpResponse:
    """Liveness: the web process answers. Cheap: touches nothing else."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def health_ready(request: HttpRequest) -> HttpResponse:
    """Readiness: database, broker, workers and beat. 200 when all are healthy, else 503 naming what is not.

    Open to anyone (load balancers and compose ask it); it tells only whether each
    part works, plus queue depths, worker names, beat's heartbeat age and which
    schedules are late (a warning, never a 503).
    """
    parts = health.readiness()
    failing = [name for name, part in parts.items() if not part.ok]
    # Late schedules are reported, not failed on: a late report must not take web out of service.
    schedules = lateness.health_part()
    body = {
        "status": "ok" if not failing else "unhealthy",
        "failing": failing,
        "warnings": [] if schedules.ok else ["schedules"],
        "checks": {**{name: part.as_json() for name, part in parts.items()}, "schedules": schedules.as_json()},
    }
    return JsonResponse(body, status=503 if failing else 200)


def _metrics_allowed(request: HttpRequest) -> bool:
    if request.user.is_authenticated and request.user.is_staff:
        return True
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; needs METRICS_TOKEN as a bearer token, or a staff session."""
    if not _metrics_allowed(request):
        response = json_error(401, "Send METRICS_TOKEN as 'Authorization: Bearer <token>', or log in as staff.")
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
