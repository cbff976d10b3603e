"""A worker child killed right after the gateway charged: the retry learns of the charge, nothing is done twice."""

from __future__ import annotations

import pytest

from sandbox.models import SandboxFault
from tests.faults.helpers import Customers, Shop, assert_each_order_done_once, wait_until_settled
from tests.support.processes import WorkerProcess
from tests.support.servers import WebProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_child_killed_right_after_the_charge_is_retried_without_a_decline_and_each_order_is_charged_once(
    shop: Shop,
) -> None:
    with WebProcess(shop.env) as web:
        web.wait_ready()
        ids = Customers(web.base_url, shop.session_key, shop.skus, clients=1, orders_each=3).start().wait()
        for pk in ids:
            # The child dies right after the gateway charged; the gateway would then
            # decline the next charge call: a repeated key must be answered first.
            faults = SandboxFault.objects.using(shop.db)
            faults.create(reference=f"order:{pk}", operation="charge", fault=SandboxFault.Fault.CRASH_AFTER)
            faults.create(reference=f"order:{pk}", operation="charge", fault=SandboxFault.Fault.DECLINE)
        with WorkerProcess(shop.env, concurrency=1) as worker:
            worker.wait_started()
            wait_until_settled(shop, ids)
            assert worker.output().count("killing worker process") == len(ids)
    assert_each_order_done_once(shop, ids)
