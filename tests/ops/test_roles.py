"""manage.py setup_roles: staff groups with exactly the permissions each job needs."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.test import Client

from notifications.models import Campaign
from ops import roles
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def setup_roles(*args: str) -> str:
    out = StringIO()
    call_command("setup_roles", *args, stdout=out)
    return out.getvalue()


def permissions_of(name: str) -> set[str]:
    group = Group.objects.get(name=name)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


def member_of(name: str) -> Client:
    user = UserFactory(is_staff=True)
    user.groups.add(Group.objects.get(name=name))
    client = Client()
    client.force_login(user)
    return client


def test_it_creates_the_four_groups_with_exactly_their_permissions() -> None:
    setup_roles()

    assert set(Group.objects.values_list("name", flat=True)) == {"Support", "Operations", "Marketing", "Finance"}
    for role in roles.ROLES:
        assert permissions_of(role.name) == set(role.permissions)


def test_a_second_run_changes_nothing_and_hand_edits_to_its_groups_are_put_back() -> None:
    setup_roles()
    assert "4 already as defined" in setup_roles()

    finance = Group.objects.get(name="Finance")
    finance.permissions.add(Permission.objects.get(codename="run_task"))
    finance.permissions.remove(Permission.objects.get(codename="request_report"))
    out = setup_roles()

    assert "added reports.request_report; removed ops.run_task" in out
    assert permissions_of("Finance") == set(roles.BY_NAME["Finance"].permissions)


def test_every_role_names_only_permissions_that_exist() -> None:
    for role in roles.ROLES:
        assert len(roles.resolve(role.permissions)) == len(set(role.permissions)), role.name


def test_list_shows_each_role_with_its_description_and_permissions() -> None:
    out = setup_roles("--list")
    assert "Operations: Runs the machinery" in out and "    ops.run_task" in out
    assert not Group.objects.exists()


def test_each_role_opens_the_pages_of_its_job_and_not_the_others() -> None:
    setup_roles()
    campaign = Campaign.objects.create(name="Spring", subject="Hi", body="Hi")
    overview, metrics, schedules = "/admin/ops/overview/", "/metrics", "/admin/django_celery_beat/periodictask/"
    progress, campaigns = f"/api/campaigns/{campaign.pk}/", "/admin/notifications/campaign/"
    new_report, users, orders = "/reports/new/", "/admin/auth/user/", "/admin/orders/order/"
    # role: (pages it opens, pages it is refused)
    expected = {
        "Finance": ([new_report, "/reports/", orders], [overview, metrics, schedules, progress, campaigns, users]),
        "Operations": ([overview, metrics, schedules, orders], [new_report, progress, campaigns, users]),
        "Marketing": ([progress, campaigns], [overview, metrics, schedules, new_report, users, orders]),
        "Support": ([users, orders], [overview, metrics, schedules, new_report, progress, campaigns]),
    }
    for name, (opens, refused) in expected.items():
        client = member_of(name)
        for path in opens:
            assert client.get(path).status_code == 200, f"{name} cannot open {path}"
        for path in refused:
            assert client.get(path).status_code in (403, 404), f"{name} can open {path}"
