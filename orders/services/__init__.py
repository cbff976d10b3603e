"""What an order means, as typed functions by role. Views, tasks, admin actions and commands call these.

- placing: validate a request and save the order with its lines (idempotency keys).
- pipeline: process an order: reserve stock, charge, ship, notify, with compensation.
- lease: claim an order, prove the claim at each step, record each finished step.
- payments: the charge (intent, gateway call, record), settling an unknown charge, the refund.
- actions: what customers and staff do to orders: cancel, replay, re-send, and the sweep.
- emails: the customer's emails about their order, through the notifications outbox.
"""
