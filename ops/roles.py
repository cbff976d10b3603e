"""The staff roles: groups with exactly the permissions each job needs, installed by manage.py setup_roles.

Django's staff flag only opens the admin's door; what a staff member may see and
do comes from permissions, and these groups bundle them by job. The groups named
here belong to this module: setup_roles gives each exactly the permissions below,
so a change is reviewed here, in code. Make groups of your own for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models import Q


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    permissions: tuple[str, ...]  # "app_label.codename"


def _model_perms(label: str, *actions: str) -> tuple[str, ...]:
    app, model = label.split(".")
    return tuple(f"{app}.{action}_{model}" for action in actions)


ROLES = (
    Role(
        "Support",
        "Customer care: looks up customers, orders and their emails; re-sends failed orders and emails; "
        "lifts login lockouts.",
        (
            "auth.view_user",
            *_model_perms("orders.order", "view", "change"),  # change: Process / Retry failed orders
            *_model_perms("orders.payment", "view"),
            *_model_perms("orders.product", "view"),
            *_model_perms("notifications.notification", "view", "change"),  # change: Resend failed / Cancel queued
            *_model_perms("notifications.emailpreference", "view", "change"),
            # Lifting a login lockout is deleting its failed attempts.
            *_model_perms("axes.accessattempt", "view", "delete"),
            *_model_perms("axes.accesslog", "view"),
        ),
    ),
    Role(
        "Operations",
        "Runs the machinery: schedules, task results, running and retrying tasks by hand (audited), the "
        "operations overview, /metrics and the details of /health/.",
        (
            "ops.view_operations",
            "ops.run_task",
            *_model_perms("ops.taskrun", "view"),
            *_model_perms("ops.beatheartbeat", "view"),
            *_model_perms("ops.schedulechange", "view"),
            # The failures page: see, replay (ops.run_task above) and dismiss with a note.
            *_model_perms("ops.failure", "view", "change"),
            *_model_perms("ops.taskapicall", "view"),
            *_model_perms("django_celery_beat.periodictask", "view", "add", "change", "delete"),
            *_model_perms("django_celery_beat.intervalschedule", "view", "add", "change", "delete"),
            *_model_perms("django_celery_beat.crontabschedule", "view", "add", "change", "delete"),
            *_model_perms("django_celery_beat.solarschedule", "view", "add", "change", "delete"),
            *_model_perms("django_celery_beat.clockedschedule", "view", "add", "change", "delete"),
            *_model_perms("django_celery_results.taskresult", "view"),
            *_model_perms("django_celery_results.groupresult", "view"),
            # What task results link to, to follow a failure to its subject.
            *_model_perms("orders.order", "view"),
            *_model_perms("notifications.notification", "view"),
            *_model_perms("reports.report", "view"),
            *_model_perms("sandbox.sandboxledgerentry", "view"),
            *_model_perms("sandbox.sandboxfault", "view", "add", "change", "delete"),
        ),
    ),
    Role(
        "Marketing",
        "Writes, starts and cancels campaigns and follows their progress; sees who unsubscribed.",
        (
            *_model_perms("notifications.campaign", "view", "add", "change"),  # change: start and cancel
            *_model_perms("notifications.emailpreference", "view"),
        ),
    ),
    Role(
        "Finance",
        "Reads sales reports and downloads their files, asks for custom ranges, regenerates and cancels reports; "
        "reads orders and payments.",
        (
            "reports.request_report",
            "reports.cancel_report",
            *_model_perms("reports.report", "view", "change"),  # change: Regenerate
            *_model_perms("orders.order", "view"),
            *_model_perms("orders.payment", "view"),
            *_model_perms("orders.product", "view"),
        ),
    ),
)
BY_NAME = {role.name: role for role in ROLES}


class UnknownPermission(Exception):
    """A role names a permission that does not exist (a typo, or an app that is not installed)."""


def resolve(names: tuple[str, ...]) -> list[Permission]:
    """The Permission rows for "app_label.codename" names; UnknownPermission names any that are missing."""
    pairs = [name.split(".", 1) for name in names]
    query = Q(pk__in=[])
    for app, codename in pairs:
        query |= Q(content_type__app_label=app, codename=codename)
    found = list(Permission.objects.filter(query).select_related("content_type"))
    known = {f"{p.content_type.app_label}.{p.codename}" for p in found}
    missing = sorted(set(names) - known)
    if missing:
        raise UnknownPermission(f"These permissions do not exist: {', '.join(missing)}.")
    return found


@dataclass(frozen=True)
class RoleChange:
    name: str
    created: bool
    added: list[str]
    removed: list[str]


def install() -> list[RoleChange]:
    """Create each role's group and give it exactly its permissions; running it again changes nothing."""
    changes = []
    with transaction.atomic():
        for role in ROLES:
            group, created = Group.objects.get_or_create(name=role.name)
            wanted = {f"{p.content_type.app_label}.{p.codename}": p for p in resolve(role.permissions)}
            current = {
                f"{p.content_type.app_label}.{p.codename}": p for p in group.permissions.select_related("content_type")
            }
            added, removed = sorted(set(wanted) - set(current)), sorted(set(current) - set(wanted))
            if added or removed:
                group.permissions.set(wanted.values())
            changes.append(RoleChange(role.name, created, added, removed))
    return changes
