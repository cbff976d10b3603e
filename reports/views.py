"""Staff-only report pages, the JSON status endpoint and authorised downloads (media is never public)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from config.api import ApiError, api_view, json_error, read_json
from core.errors import Refused
from reports.forms import ReportRangeForm
from reports.models import Report
from reports.services import cancelling, requesting


def report_json(report: Report) -> dict[str, object]:
    """A report as the JSON API and the report page's script read it."""
    done = report.status == Report.Status.DONE
    return {
        "id": report.pk,
        "kind": report.kind,
        "period_start": report.period_start.isoformat(),
        "period_end": report.period_end.isoformat(),
        "status": report.status,
        "progress": report.progress,
        "summary": report.summary,
        "error": report.error,
        "csv_url": reverse("reports:download", args=[report.pk]) if done and report.csv_file else None,
        "chart_url": reverse("reports:chart", args=[report.pk]) if done and report.chart else None,
    }


VIEW = "reports.view_report"
REQUEST = "reports.request_report"
CANCEL = "reports.cancel_report"


def staff_page(permission: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Visitors are sent to log in; anyone logged in without the permission gets 403."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        return login_required(permission_required(permission, raise_exception=True)(view))

    return decorate


@staff_page(VIEW)
def report_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(Report.objects.select_related("requested_by"), 25).get_page(request.GET.get("page"))
    return render(request, "reports/report_list.html", {"page": page})


@staff_page(REQUEST)
@require_http_methods(["GET", "POST"])
def report_new(request: HttpRequest) -> HttpResponse:
    form = ReportRangeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        report = requesting.request_report(
            kind=Report.Kind.CUSTOM,
            start=form.cleaned_data["start"],
            end=form.cleaned_data["end"],
            requested_by_id=request.user.pk,
        )
        return redirect("reports:detail", report_id=report.pk)
    definition = Report.REVENUE_DEFINITION.format(zone=settings.TIME_ZONE)
    return render(request, "reports/report_new.html", {"form": form, "definition": definition})


@staff_page(VIEW)
def report_detail(request: HttpRequest, report_id: int) -> HttpResponse:
    report = get_object_or_404(Report, pk=report_id)
    can_cancel = not report.is_final and request.user.has_perm(CANCEL)
    context = {"report": report, "data": report_json(report), "can_cancel": can_cancel}
    return render(request, "reports/report_detail.html", context)


@staff_page(CANCEL)
@require_http_methods(["POST"])
def report_cancel(request: HttpRequest, report_id: int) -> HttpResponse:
    """The report page's Cancel button: stop a pending or running report, then show it again."""
    report = get_object_or_404(Report, pk=report_id)
    try:
        cancelling.cancel_report(report.pk, actor_id=request.user.pk)
    except Refused as exc:
        messages.warning(request, str(exc))
    else:
        messages.success(request, "The report was cancelled; its slices stop.")
    return redirect("reports:detail", report_id=report.pk)


def _stored_file(report: Report, field: str) -> FileResponse:
    stored = getattr(report, field)
    if report.status != Report.Status.DONE or not stored:
        raise Http404("The report has no file yet.")
    try:
        handle = stored.open("rb")
    except FileNotFoundError:
        raise Http404("The file is missing from storage.") from None
    return handle


@staff_page(VIEW)
def report_download(request: HttpRequest, report_id: int) -> HttpResponse:
    report = get_object_or_404(Report, pk=report_id)
    name = f"{report.kind}-report-{report.period_start}-{report.period_end}.csv"
    return FileResponse(_stored_file(report, "csv_file"), as_attachment=True, filename=name, content_type="text/csv")


@staff_page(VIEW)
def report_chart(request: HttpRequest, report_id: int) -> HttpResponse:
    report = get_object_or_404(Report, pk=report_id)
    return FileResponse(_stored_file(report, "chart"), content_type="image/png")


@api_view(methods=("GET",), permission=VIEW)
def api_report_detail(request: HttpRequest, report_id: int) -> HttpResponse:
    report = Report.objects.filter(pk=report_id).first()
    if report is None:
        return json_error(404, "No such report.")
    return JsonResponse(report_json(report))


# {"start": "YYYY-MM-DD", "end": "YYYY-MM-DD"} is about 40 bytes; this leaves room and no more.
REQUEST_MAX_BYTES = 1024


def _text_or_absent(data: dict, name: str) -> bool:
    """A date must come as text: the form's date parsing takes nothing else (a number would be a 500)."""
    return name not in data or isinstance(data[name], str)


@api_view(methods=("POST",), permission=REQUEST)
def api_request_report(request: HttpRequest) -> HttpResponse:
    """POST /api/reports/ {"start": "YYYY-MM-DD", "end": "YYYY-MM-DD"} → 202, or 400 with field errors."""
    data = read_json(request, max_bytes=REQUEST_MAX_BYTES)
    if not isinstance(data, dict):
        return json_error(400, errors={"body": ['Expected a JSON object like {"start": "...", "end": "..."}.']})
    wrong = {
        name: ["Give the date as a string, YYYY-MM-DD."] for name in ("start", "end") if not _text_or_absent(data, name)
    }
    if wrong:
        raise ApiError(400, errors=wrong)
    form = ReportRangeForm({name: data[name] for name in ("start", "end") if name in data})
    if not form.is_valid():
        return json_error(400, errors={name: list(messages) for name, messages in form.errors.items()})
    report = requesting.request_report(
        kind=Report.Kind.CUSTOM,
        start=form.cleaned_data["start"],
        end=form.cleaned_data["end"],
        requested_by_id=request.user.pk,
    )
    url = reverse("reports:api-detail", args=[report.pk])
    response = JsonResponse({**report_json(report), "url": url}, status=202)
    response["Location"] = url
    return response


@api_view(methods=("POST",), permission=CANCEL)
def api_cancel_report(request: HttpRequest, report_id: int) -> HttpResponse:
    """POST /api/reports/<id>/cancel/ → 200 with the report (now cancelled), 404, or 409 with the reason."""
    if not Report.objects.filter(pk=report_id).exists():
        return json_error(404, "No such report.")
    try:
        report = cancelling.cancel_report(report_id, actor_id=request.user.pk)
    except Refused as exc:
        return json_error(409, str(exc))
    return JsonResponse(report_json(report))
