"""Beat killed and started again: the new process leads at once and its sweeps recover what was lost."""

from __future__ import annotations

import pytest

from tests.faults.helpers import Customers, Shop, assert_each_order_done_once, wait_until_settled
from tests.support.processes import BeatProcess, WorkerProcess, wait_for
from tests.support.servers import WebProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_beat_killed_and_started_again_leads_at_once_and_its_sweeps_recover_orders_whose_messages_were_lost(
    shop: Shop,
) -> None:
    with (
        WebProcess(shop.env) as web,
        WorkerProcess.shipped(shop.env, "worker-default") as worker,
        WorkerProcess.shipped(shop.env, "worker-high") as emails,
        BeatProcess(shop.env) as first,
    ):
        web.wait_ready()
        worker.wait_started()
        emails.wait_started()
        wait_for(lambda: "is the leader now" in first.output(), 30, 0.2, "beat to lead")

        # Orders saved while Redis is down; Redis comes back empty, so only a sweep can send them.
        shop.redis.stop()
        ids = Customers(web.base_url, shop.session_key, shop.skus, clients=2, orders_each=3).start().wait()
        first.kill_group()  # the machine lost beat: no shutdown, its leader lock goes with its session
        shop.redis.start()

        with BeatProcess(shop.env) as second:
            wait_for(lambda: "is the leader now" in second.output(), 15, 0.2, "the new beat to lead")
            wait_until_settled(shop, ids, 60)
    assert_each_order_done_once(shop, ids)
