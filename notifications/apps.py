from __future__ import annotations

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"

    def ready(self) -> None:
        from celery.signals import worker_process_shutdown

        from notifications import mailer

        # A worker process that kept an SMTP connection open says QUIT on its way out.
        worker_process_shutdown.connect(mailer.close_on_shutdown, dispatch_uid="notifications.mailer.close", weak=False)
