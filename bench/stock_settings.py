"""The stock configuration, as a baseline for the order pipeline (never used by the product).

The project's settings, with what the benchmark issue tunes put back to Celery's
and Django's defaults: the database connection closed around every task (no
CELERY_DB_REUSE_MAX, CONN_MAX_AGE 0), and every task storing every state.
"""

from config.settings import *  # noqa: F403
from config.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 0
CELERY_DB_REUSE_MAX = None
