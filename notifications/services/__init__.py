"""Notifications: every email is an outbox row before it is a task. Typed functions by role:

- outbox: queue an email (a row, sent after commit), send one, resend or cancel it.
- messages: turn a row into an email, and read what an SMTP error means.
- bulk: send many rows per task over one SMTP connection (campaign and digest chunks).
- campaigns: staff write, start, follow and cancel a campaign.
- preferences: customers opt out of marketing email (signed unsubscribe links).
- sweeps: re-send what was never picked up, expire what is late, delete what is old.

Transactional emails (order status, password reset, report ready) go one by one on
high_priority; bulk ones in chunks on low_priority. Both claim rows with a
conditional update that takes a lease, share one rate limit, and never send a
row twice. The emails of other apps live with those apps (orders.services.emails,
reports.services.emails) and go out through the outbox.
"""
