"""The project's settings with django-celery-results' own result backend: the Celery floor before the upsert.

Only the backend differs: the library's stores each state with get-or-create
(a SELECT, then an INSERT or UPDATE, then a commit); the project's
(core/results.py, through ops/result_backend.py) with one INSERT ... ON CONFLICT.
The floor scenario measures both in each round (never used by the product).
"""

from config.settings import *  # noqa: F403

CELERY_RESULT_BACKEND = "django-db"
