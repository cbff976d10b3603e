"""The fault suite: the faults an operator meets, each run against real processes and servers of the test's own.

Each scenario asserts that nothing was lost and nothing was done twice: every
order placed (202) is final, charged once in the sandbox ledger, its stock moved
once, and emailed once as seen by a real SMTP server (helpers.assert_each_order_done_once).

| # | fault | test |
|---|---|---|
| 1 | a worker child SIGKILLed mid-order, and right after a charge | tests/orders/test_pipeline.py (`..._child_killed_mid_charge_...`, `..._killed_right_after_the_gateway_charged_...`), test_worker_child_killed.py (the gateway would decline the retry) |
| 2 | a whole worker SIGKILLed, then restarted | tests/orders/test_pipeline.py (`..._whole_worker_killed_mid_order_...`) |
| 3 | the broker down at enqueue | tests/orders/test_broker_outage.py |
| 4 | Redis stopped under load with the workers kept running, restarted empty | test_broker_loss.py |
| 5 | PostgreSQL restarted under load (web and workers), then worker children replaced | test_database_restart.py |
| 6 | two beats | tests/ops/test_beat.py (`test_two_beats_...`) |
| 7 | beat killed and started again | test_beat_restart.py |
| 8 | a worker killed mid-slice of a report, and mid-chunk of a campaign | campaign: test_campaign_worker_killed.py; report: test_report_faults.py (a child, a whole worker, a part completing twice) |
| 9 | a soft time limit hit by an email send, a campaign chunk and a report slice | email and campaign chunk: test_interruptions.py; report slice: test_report_faults.py (soft and hard limits) |
| 10 | a task terminated mid-send (revoke --terminate, a lost broker connection): an email, a campaign chunk | test_interruptions.py |

The web's answers during outages (503, never 500) are in test_web_outages.py.
Servers: `own_redis` and `own_postgres` (conftest.py) are started for each test
on free ports; `Shop.move_to` copies the test database, with the data the test
made, into the test's own PostgreSQL.
"""
