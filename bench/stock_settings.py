"""The stock configuration, as a baseline for the order pipeline (never used by the product).

The project's settings, with what the benchmark issue tunes put back to Celery's,
Kombu's and Django's defaults: the database connection closed around every task
(no CELERY_DB_REUSE_MAX, CONN_MAX_AGE 0), every task storing every state (no
per-task annotations) with the library's get-or-create, Kombu's own transports,
and Celery's own worker consumer (task events with confirms on RabbitMQ). The product code and
every safety setting (acks_late, prefetch 1, time limits, routing) are the same.
"""

from config.settings import *  # noqa: F403
from config.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 0
CELERY_DB_REUSE_MAX = None
CELERY_TASK_ANNOTATIONS = None
CELERY_BROKER_TRANSPORT = None
CELERY_RESULT_BACKEND = "django-db"
CELERY_WORKER_CONSUMER = "celery.worker.consumer:Consumer"
