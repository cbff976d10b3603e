"""Who may open what: every URL pattern in the resolver × six kinds of caller, against one table of statuses.

The table below is the contract. A URL added without a row (or an admin model
without an object in the world below) fails `test_every_url_has_a_rule`, so no
page or endpoint ships without someone deciding who may use it.

Callers: anonymous, the customer who owns the objects, another customer, staff
with no permission, staff with exactly the permission the row names, superuser.
Admin pages of registered models follow one rule (view/add/delete permission of
that model), with the exceptions the admin makes on purpose listed in NO_ADD
and NO_DELETE.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from django_celery_results.models import GroupResult, TaskResult

from notifications.models import Campaign, EmailPreference, Notification
from notifications.services.preferences import unsubscribe_token
from ops.models import BeatHeartbeat, Failure, ScheduleChange, TaskApiCall, TaskRun
from orders.models import Order, Payment
from reports.models import Report
from sandbox.models import SandboxFault, SandboxLedgerEntry
from tests.factories import StaffFactory, UserFactory, client_of, staff_with
from tests.orders.helpers import place, product

pytestmark = pytest.mark.django_db

ACTORS = ("anonymous", "customer", "other_customer", "staff", "staff_with_permission", "superuser")


@dataclass(frozen=True)
class Rule:
    path: str  # formatted with the world's ids
    permission: str | tuple[str, ...] | None  # what "staff_with_permission" holds
    statuses: tuple[int, int, int, int, int, int]  # in ACTORS order
    method: str = "GET"
    body: str | None = None  # JSON, for POST


# 302 for a caller who may not see a page is a redirect to a login form: the site's for pages that
# need a login, the admin's for anyone who is not staff.

# Admin pages of registered models: changelist, change and history need "view", add needs "add",
# delete needs "delete" (admin_rule below); NO_ADD and NO_DELETE are refused to everyone.
ADMIN_MODEL_STATUSES = (302, 302, 302, 403, 200, 200)
REFUSED_TO_ALL = (302, 302, 302, 403, 403, 403)

TABLE: dict[str, Rule] = {
    # name: Rule(path, permission, statuses for: anonymous, customer, other customer, staff, staff with it, superuser)
    "home": Rule("/", None, (302, 302, 302, 302, 302, 302)),
    "health-live": Rule("/health/live", None, (200, 200, 200, 200, 200, 200)),
    # No worker or beat runs in this test, so readiness is 503 for everyone; what it tells differs (test_health_*).
    "health": Rule("/health/", None, (503, 503, 503, 503, 503, 503)),
    "metrics": Rule("/metrics", "ops.view_operations", (401, 403, 403, 403, 200, 200)),
    "ops-overview": Rule("/admin/ops/overview/", "ops.view_operations", (302, 302, 302, 403, 200, 200)),
    "ops-failures": Rule("/admin/ops/failures/", "ops.view_failure", (302, 302, 302, 403, 200, 200)),
    # The staff task API (DELETE also needs ops.run_task: tests/ops/test_task_api.py).
    "api-task": Rule("/api/tasks/some-task-id/", "ops.view_operations", (401, 403, 403, 403, 200, 200)),
    # The API's description is public, as the endpoints' own 401/403 answers are: it holds no data.
    "api-schema": Rule("/api/schema/", None, (200, 200, 200, 200, 200, 200)),
    "api-docs": Rule("/docs/api/", None, (200, 200, 200, 200, 200, 200)),
    "signup": Rule("/accounts/signup/", None, (200, 302, 302, 302, 302, 302)),
    "signup_done": Rule("/accounts/signup/done/", None, (200, 200, 200, 200, 200, 200)),
    # A link that is not valid (a customer's is tested in test_accounts): the page says so, for anyone.
    "confirm_email": Rule("/accounts/confirm/MQ/bad-token/", None, (404, 404, 404, 404, 404, 404)),
    "api-me": Rule("/api/me/", None, (401, 200, 200, 200, 200, 200)),
    "login": Rule("/accounts/login/", None, (200, 200, 200, 200, 200, 200)),
    "logout": Rule("/accounts/logout/", None, (405, 405, 405, 405, 405, 405)),
    "password_change": Rule("/accounts/password_change/", None, (302, 200, 200, 200, 200, 200)),
    "password_change_done": Rule("/accounts/password_change/done/", None, (302, 200, 200, 200, 200, 200)),
    "password_reset": Rule("/accounts/password_reset/", None, (200, 200, 200, 200, 200, 200)),
    "password_reset_done": Rule("/accounts/password_reset/done/", None, (200, 200, 200, 200, 200, 200)),
    # A link that is not valid: the page says so, for anyone.
    "password_reset_confirm": Rule("/accounts/reset/MQ/bad-token/", None, (200, 200, 200, 200, 200, 200)),
    "password_reset_complete": Rule("/accounts/reset/done/", None, (200, 200, 200, 200, 200, 200)),
    "orders:list": Rule("/orders/", None, (302, 200, 200, 200, 200, 200)),
    "orders:new": Rule("/orders/new/", None, (302, 200, 200, 200, 200, 200)),
    # Only the owner sees an order; to everyone else it does not exist, staff included.
    "orders:detail": Rule("/orders/{order}/", None, (302, 200, 404, 404, 404, 404)),
    "orders:api-place": Rule("/api/orders/", None, (401, 400, 400, 400, 400, 400), "POST", '{"lines": []}'),
    "orders:api-detail": Rule("/api/orders/{order}/", None, (401, 200, 404, 404, 404, 404)),
    # The order is completed: its owner is told why it cannot be cancelled.
    "orders:api-cancel": Rule("/api/orders/{order}/cancel/", None, (401, 409, 404, 404, 404, 404), "POST"),
    # The signed token is the authority, as the link arrives by email (RFC 8058).
    "notifications:unsubscribe": Rule("/unsubscribe/{unsubscribe}/", None, (200, 200, 200, 200, 200, 200)),
    "notifications:api-campaign": Rule(
        "/api/campaigns/{campaign}/", "notifications.view_campaign", (401, 403, 403, 403, 200, 200)
    ),
    "reports:list": Rule("/reports/", "reports.view_report", (302, 403, 403, 403, 200, 200)),
    "reports:new": Rule("/reports/new/", "reports.request_report", (302, 403, 403, 403, 200, 200)),
    "reports:detail": Rule("/reports/{report}/", "reports.view_report", (302, 403, 403, 403, 200, 200)),
    "reports:download": Rule("/reports/{report}/download/", "reports.view_report", (302, 403, 403, 403, 200, 200)),
    "reports:chart": Rule("/reports/{report}/chart.png", "reports.view_report", (302, 403, 403, 403, 200, 200)),
    "reports:api-request": Rule(
        "/api/reports/", "reports.request_report", (401, 403, 403, 403, 400, 400), "POST", "{}"
    ),
    "reports:api-detail": Rule("/api/reports/{report}/", "reports.view_report", (401, 403, 403, 403, 200, 200)),
    # The report is done: whoever may cancel is told it cannot be (409; the page redirects back to it, saying so).
    "reports:api-cancel": Rule(
        "/api/reports/{report}/cancel/", "reports.cancel_report", (401, 403, 403, 403, 409, 409), "POST"
    ),
    "reports:cancel": Rule(
        "/reports/{report}/cancel/", "reports.cancel_report", (302, 403, 403, 403, 302, 302), "POST"
    ),
    # The admin's own pages.
    "admin:index": Rule("/admin/", None, (302, 302, 302, 200, 200, 200)),
    "admin:login": Rule("/admin/login/", None, (200, 200, 200, 302, 302, 302)),
    # Logging out is a POST; the admin first sends anyone who is not staff to its login.
    "admin:logout": Rule("/admin/logout/", None, (302, 302, 302, 405, 405, 405)),
    "admin:password_change": Rule("/admin/password_change/", None, (302, 302, 302, 200, 200, 200)),
    "admin:password_change_done": Rule("/admin/password_change/done/", None, (302, 302, 302, 200, 200, 200)),
    "admin:jsi18n": Rule("/admin/jsi18n/", None, (302, 302, 302, 200, 200, 200)),
    # Without a field to complete, every staff member is refused.
    "admin:autocomplete": Rule("/admin/autocomplete/", None, (302, 302, 302, 403, 403, 403)),
    # Orders have no public page to send anyone to.
    "admin:view_on_site": Rule("/admin/r/{order_type}/{order}/", None, (302, 302, 302, 404, 404, 404)),
    # An app's index shows only to those who may see one of its models.
    "admin:app_list": Rule("/admin/orders/", "orders.view_order", (302, 302, 302, 404, 200, 200)),
    "admin/(?P<url>.*)$": Rule("/admin/no-such-page/", None, (302, 302, 302, 404, 404, 404)),
    # Adding a user is setting a password too: Django's user admin wants both rights.
    "admin:auth_user_add": Rule("/admin/auth/user/add/", ("auth.add_user", "auth.change_user"), ADMIN_MODEL_STATUSES),
    # Setting someone's password: only with the right to change users.
    "admin:auth_user_password_change": Rule(
        "/admin/auth/user/{user}/password/", "auth.change_user", (302, 302, 302, 403, 200, 200)
    ),
    # Start, cancel and resume a campaign (it is cancelled already: the admin says so and goes back to it).
    "admin:notifications_campaign_start": Rule(
        "/admin/notifications/campaign/{campaign}/start/",
        "notifications.change_campaign",
        (302, 302, 302, 403, 302, 302),
        "POST",
    ),
    "admin:notifications_campaign_cancel": Rule(
        "/admin/notifications/campaign/{campaign}/cancel/",
        "notifications.change_campaign",
        (302, 302, 302, 403, 302, 302),
        "POST",
    ),
    "admin:notifications_campaign_resume": Rule(
        "/admin/notifications/campaign/{campaign}/resume/",
        "notifications.change_campaign",
        (302, 302, 302, 403, 302, 302),
        "POST",
    ),
}

# Models whose admin refuses add or delete to everyone, superusers included.
NO_ADD = {
    "axes.accessattempt",
    "axes.accesslog",
    "axes.accessfailurelog",
    "orders.order",
    "orders.payment",
    "sandbox.sandboxledgerentry",
    "notifications.notification",
    "reports.report",
    "ops.taskrun",
    "ops.beatheartbeat",
    "ops.schedulechange",
    "ops.failure",
    "ops.taskapicall",
    "django_celery_results.taskresult",
}
NO_DELETE = {"orders.order", "orders.payment", "ops.schedulechange", "ops.failure", "ops.taskapicall"}
ADMIN_PAGE_PERMISSION = {"changelist": "view", "change": "view", "history": "view", "add": "add", "delete": "delete"}
# The unnamed "<object_id>/" pattern of each model only redirects to its change page, for staff.
OBJECT_REDIRECT = (302, 302, 302, 302, 302, 302)


def url_patterns() -> Iterator[tuple[str, str]]:
    """(name or pattern, route) of every URL pattern the site answers, admin included."""

    def walk(patterns: list, prefix: str, namespace: str | None) -> Iterator[tuple[str, str]]:
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                inner = ":".join(part for part in (namespace, entry.namespace) if part) or None
                yield from walk(entry.url_patterns, route, inner)
            elif isinstance(entry, URLPattern):
                name = f"{namespace}:{entry.name}" if namespace and entry.name else entry.name
                yield name or route, route

    return walk(get_resolver().url_patterns, "", None)


def admin_models() -> dict[str, type]:
    return {f"{model._meta.app_label}.{model._meta.model_name}": model for model in admin.site._registry}


def admin_rule(name: str, world: dict[str, object]) -> Rule | None:
    """The rule for one of a registered model's admin pages, or None if `name` is not one."""
    for label in admin_models():
        app, model_name = label.split(".")
        for page, action in ADMIN_PAGE_PERMISSION.items():
            if name != f"admin:{app}_{model_name}_{page}":
                continue
            pk = world["objects"][label]
            path = {
                "changelist": f"/admin/{app}/{model_name}/",
                "add": f"/admin/{app}/{model_name}/add/",
                "change": f"/admin/{app}/{model_name}/{pk}/change/",
                "history": f"/admin/{app}/{model_name}/{pk}/history/",
                "delete": f"/admin/{app}/{model_name}/{pk}/delete/",
            }[page]
            refused = (page == "add" and label in NO_ADD) or (page == "delete" and label in NO_DELETE)
            return Rule(path, f"{app}.{action}_{model_name}", REFUSED_TO_ALL if refused else ADMIN_MODEL_STATUSES)
        if name == f"admin/{app}/{model_name}/<path:object_id>/":
            return Rule(f"/admin/{app}/{model_name}/{world['objects'][label]}/", None, OBJECT_REDIRECT)
    return None


def rule_for(name: str, world: dict[str, object]) -> Rule | None:
    rule = TABLE.get(name) or admin_rule(name, world)
    if rule is None:
        return None
    return Rule(rule.path.format(**world), rule.permission, rule.statuses, rule.method, rule.body)


# --- the world every caller looks at ------------------------------------------------------------


@pytest.fixture
def world(settings, tmp_path) -> dict[str, object]:
    settings.MEDIA_ROOT = str(tmp_path)
    customer = UserFactory()
    order = place(customer, (product(), 1))
    Order.objects.filter(pk=order.pk).update(status=Order.Status.COMPLETED, step="notified")
    payment = Payment.objects.create(order=order, kind="charge", amount=order.total, idempotency_key="authz-charge")
    report = Report.objects.create(
        kind=Report.Kind.CUSTOM, period_start=date(2025, 1, 1), period_end=date(2025, 1, 2), status=Report.Status.DONE
    )
    report.csv_file.save("authz.csv", ContentFile(b"date,sku\n"), save=False)
    report.chart.save("authz.png", ContentFile(b"\x89PNG\r\n"), save=False)
    report.save()
    campaign = Campaign.objects.create(name="Spring", subject="Hello", body="Hi", status=Campaign.Status.CANCELLED)
    every_minute = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    objects = {
        "auth.user": customer,
        "auth.group": Group.objects.create(name="Authz group"),
        "orders.product": product(),
        "orders.order": order,
        "orders.payment": payment,
        "sandbox.sandboxledgerentry": SandboxLedgerEntry.objects.create(
            kind="charge", idempotency_key="authz", reference=f"order:{order.pk}", amount=order.total
        ),
        "sandbox.sandboxfault": SandboxFault.objects.create(reference="order:0", operation="charge", fault="decline"),
        "notifications.notification": Notification.objects.create(
            recipient=customer.email, kind="order_completed", subject="Done", body_text="Done", dedup_key="authz"
        ),
        "notifications.campaign": campaign,
        "notifications.emailpreference": EmailPreference.objects.create(user=customer),
        "reports.report": report,
        "ops.taskrun": TaskRun.objects.create(
            task_name="orders.tasks.check_pending_orders", task_id="authz", source="command"
        ),
        "ops.failure": Failure.objects.create(
            task_id="authz-failure",
            task_name="orders.tasks.process_order",
            error_type="OrderFailed",
            label="Payment declined",
            fingerprint="authz",
            failed_at=timezone.now(),
        ),
        "ops.taskapicall": TaskApiCall.objects.create(task_id="authz-call", action="view"),
        "ops.schedulechange": ScheduleChange.objects.create(
            via="admin", action="added", kind="interval", object_id="1", object_name="every minute"
        ),
        "ops.beatheartbeat": BeatHeartbeat.objects.create(
            node="authz:1", role="leader", started_at=timezone.now(), seen_at=timezone.now() - timedelta(hours=2)
        ),
        "django_celery_beat.periodictask": PeriodicTask.objects.create(
            name="Authz", task="orders.tasks.check_pending_orders", interval=every_minute, enabled=False
        ),
        "django_celery_beat.intervalschedule": every_minute,
        "django_celery_beat.crontabschedule": CrontabSchedule.objects.create(minute="5"),
        "django_celery_beat.solarschedule": SolarSchedule.objects.create(event="sunrise", latitude=52, longitude=5),
        "django_celery_beat.clockedschedule": ClockedSchedule.objects.create(clocked_time=timezone.now()),
        "django_celery_results.taskresult": TaskResult.objects.create(task_id="authz-result", status="SUCCESS"),
        "django_celery_results.groupresult": GroupResult.objects.create(group_id="authz-group"),
        "axes.accessattempt": AccessAttempt.objects.create(
            username="x",
            ip_address="203.0.113.9",
            user_agent="",
            http_accept="",
            path_info="/",
            get_data="",
            post_data="",
            failures_since_start=1,
        ),
        "axes.accesslog": AccessLog.objects.create(username="x", user_agent="", http_accept="", path_info="/"),
        "axes.accessfailurelog": AccessFailureLog.objects.create(
            username="x", user_agent="", http_accept="", path_info="/"
        ),
    }
    return {
        "customer": customer,
        "user": customer.pk,
        "order": order.pk,
        "order_type": ContentType.objects.get_for_model(Order).pk,
        "report": report.pk,
        "campaign": campaign.pk,
        "unsubscribe": unsubscribe_token(customer.pk),
        "objects": {label: obj.pk for label, obj in objects.items()},
    }


def client_for(actor: str, world: dict[str, object], permission: str | tuple[str, ...] | None) -> Client:
    permissions = (permission,) if isinstance(permission, str) else permission or ()
    user = {
        "anonymous": lambda: None,
        "customer": lambda: world["customer"],
        "other_customer": lambda: UserFactory(),
        "staff": lambda: staff_with(),
        "staff_with_permission": lambda: staff_with(*permissions),
        "superuser": lambda: StaffFactory(),
    }[actor]()
    return Client() if user is None else client_of(user)


# --- the tests -------------------------------------------------------------------------------------


def test_every_url_has_a_rule(world) -> None:
    missing = [name for name, _ in url_patterns() if rule_for(name, world) is None]
    assert not missing, f"URLs with no authorization rule (add a row to TABLE): {missing}"
    registered = set(admin_models())
    assert registered <= set(world["objects"]), f"give the world an object of {registered - set(world['objects'])}"


def test_every_caller_gets_the_status_the_table_says_for_every_url(world) -> None:
    wrong = []
    seen = set()
    for name, _ in url_patterns():
        if name in seen:
            continue  # password_reset is routed twice; the first route answers
        seen.add(name)
        rule = rule_for(name, world)
        for actor, expected in zip(ACTORS, rule.statuses, strict=True):
            client = client_for(actor, world, rule.permission)
            if rule.method == "POST":
                response = client.post(rule.path, rule.body or "", content_type="application/json")
            else:
                response = client.get(rule.path)
            if response.status_code != expected:
                wrong.append(f"{rule.method} {rule.path} as {actor}: {response.status_code}, table says {expected}")
    assert not wrong, "\n".join(wrong)
