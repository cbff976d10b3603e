"""Settings for every process (web, worker, beat), read from the environment.

Nothing set gives a local setup that runs with no servers: SQLite and a file-based
broker under ./var. Docker compose and CI set real URLs. See README "Configuration".
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config import task_options
from config.brokers import broker_transport, broker_url, task_queues, transport_options
from config.database import database
from config.env import (
    env_bool,
    env_choice,
    env_currency,
    env_database,
    env_duration,
    env_email,
    env_float,
    env_int,
    env_list,
    env_locale,
    env_port,
    env_rate,
    env_secret_key,
    env_str,
    env_time_zone,
)
from config.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "var"))).resolve()

# Fail closed: production is the default, and the run command turns DEBUG on.
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret_key("SECRET_KEY", debug=DEBUG, key_file=DATA_DIR / "dev-secret-key")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

TIME_ZONE = env_time_zone("TIME_ZONE", "UTC")
USE_TZ = True
LANGUAGE_CODE = "en-us"
USE_I18N = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "django_celery_results",
    "axes",
    "core",
    "ops",
    "accounts",
    "orders",
    "sandbox",
    "notifications",
    "reports",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A database or broker outage answers 503 with Retry-After, not 500 (also handler500).
    "core.unavailable.OutageMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------
# Connections persist (DATABASE_CONN_MAX_AGE seconds) with health checks; SQLite runs in
# WAL mode with queued writers (config/database.py says why).
DATABASES = {
    "default": database(
        env_database("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600, minimum=0),
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
CSRF_FAILURE_VIEW = "config.api.csrf_failure"

# --- Login throttling (django-axes), sign-up and password reset ------------------------
# AxesStandaloneBackend refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
# Failed logins (site and admin alike) for one username from one address before a lockout...
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
# ...which lasts this long (Support can lift it earlier in the admin: Axes > Access attempts).
AXES_COOLOFF_TIME = env_duration("LOGIN_LOCKOUT", "15m")
# The pair, not either alone: locking a username on its own would let anyone lock a
# customer out, and an address on its own would lock out a whole office behind one NAT.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Proxies in front of web that append to X-Forwarded-For (0: REMOTE_ADDR is the client).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)
AXES_CLIENT_IP_CALLABLE = "accounts.client_ip.client_ip"
# At most one reset email per address in this long, whatever is asked.
PASSWORD_RESET_EMAIL_INTERVAL = env_duration("PASSWORD_RESET_EMAIL_INTERVAL", "5m")
# Per client address: password reset and sign-up requests (count per s, m or h; "off").
PASSWORD_RESET_RATE_LIMIT = env_rate("PASSWORD_RESET_RATE_LIMIT", "10/h")
SIGNUP_RATE_LIMIT = env_rate("SIGNUP_RATE_LIMIT", "10/h")
# Reset and sign-up confirmation links work this long (Django's default, 3 days).
PASSWORD_RESET_TIMEOUT = int(env_duration("PASSWORD_RESET_TIMEOUT", "3d").total_seconds())
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- Static and media files ---------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "static")))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(DATA_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Email ------------------------------------------------------------------
if not DEBUG and "EMAIL_URL" not in os.environ:
    # Without it, production would print reset links to the worker's log (console) or,
    # in compose, hand every email to a catch-all server: the choice must be explicit.
    raise ImproperlyConfigured(
        "EMAIL_URL is required when DEBUG is off, e.g. smtp://user:password@smtp.example.com:587?tls=1 "
        "(console:// prints each email, links included, to the worker's output)."
    )
globals().update(env_email("EMAIL_URL", "console://"))
# A hung SMTP server must not hold a worker for the whole task time limit.
EMAIL_TIMEOUT = globals().get("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Shop <shop@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Absolute links in emails (order pages, unsubscribe) start with this.
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")
# At most this many emails per period, across all workers: (count, seconds) or None.
EMAIL_RATE_LIMIT = env_rate("EMAIL_RATE_LIMIT", "100/m")
EMAIL_MAX_RETRIES = env_int("EMAIL_MAX_RETRIES", 5, minimum=0)
EMAIL_RETRY_BACKOFF = env_int("EMAIL_RETRY_BACKOFF", 10, minimum=1)
# The sweep re-sends queued emails older than this (e.g. after a broker outage).
NOTIFICATION_REQUEUE_AFTER = env_duration("NOTIFICATION_REQUEUE_AFTER", "5m")
NOTIFICATION_LEASE_TIMEOUT = env_duration("NOTIFICATION_LEASE_TIMEOUT", "2m")
# Sent and expired emails are deleted after this long.
NOTIFICATION_RETENTION = env_duration("NOTIFICATION_RETENTION", "30d")

# --- Security (HTTPS behind a proxy in production) ----------------------------
_proxy_header = env_str("SECURE_PROXY_SSL_HEADER", "")
if _proxy_header:
    # The proxy sets this header to "https"; only trust it when a proxy strips
    # whatever the client sent, which is why it is off unless configured.
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Prometheus scrapes /metrics from inside the compose network, not through the HTTPS
# proxy; a redirect to https would fail every scrape. The bearer token was sent by
# then anyway, and staff session cookies are Secure, so nothing more travels in clear.
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# --- Logging ------------------------------------------------------------------
# One configuration for every process. Celery is told not to touch logging
# (see config/celery.py), so worker and beat logs go through this too.
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
# Every record goes to the console through the task-context and redaction filters, and
# Celery's own per-task lines are left out (config/logs.py).
LOGGING = logging_config(LOG_LEVEL)

# --- Orders -------------------------------------------------------------------
# Amounts are shown to people in this currency and locale (core/formats.py).
SHOP_CURRENCY = env_currency("SHOP_CURRENCY", "EUR")
SHOP_LOCALE = env_locale("SHOP_LOCALE", "en_US")


def _provider(path: str) -> str:
    # The sandbox lived in orders until it became an app of its own; an
    # environment written with its old dotted path keeps working.
    return "sandbox.providers." + path.removeprefix("orders.sandbox.") if path.startswith("orders.sandbox.") else path


# Dotted paths to the payment gateway and carrier; the defaults are sandboxes.
PAYMENT_GATEWAY = _provider(env_str("PAYMENT_GATEWAY", "sandbox.providers.SandboxGateway"))
SHIPPING_CARRIER = _provider(env_str("SHIPPING_CARRIER", "sandbox.providers.SandboxCarrier"))
# The sandbox reads its behaviour from env because workers are separate processes.
PAYMENT_SANDBOX_LATENCY_MS = env_int("PAYMENT_SANDBOX_LATENCY_MS", 20, minimum=0)
PAYMENT_SANDBOX_TRANSIENT_RATE = env_float("PAYMENT_SANDBOX_TRANSIENT_RATE", 0.0, minimum=0, maximum=1)
PAYMENT_SANDBOX_DECLINE_RATE = env_float("PAYMENT_SANDBOX_DECLINE_RATE", 0.0, minimum=0, maximum=1)
# How long a task's claim on an order lasts without being renewed; a step renews it
# once less than half is left. Longer than any single step, so a live task never
# loses its order.
ORDER_LEASE_TIMEOUT = env_duration("ORDER_LEASE_TIMEOUT", "2m")
# Every call to the gateway or the carrier gives up after this long (a provider
# adapter passes it to its HTTP client; the sandbox honours it). The threads pool
# that runs orders enforces no task time limit, so this, not Celery, is what ends
# a hung call, and the order's lease is what bounds the whole order: a call that
# outlives the lease loses the order to the sweep's next task. Keep it under half
# the lease, so that a step that waited the whole timeout still holds its order.
PROVIDER_TIMEOUT = env_duration("PROVIDER_TIMEOUT", min(timedelta(seconds=10), ORDER_LEASE_TIMEOUT))
if not timedelta(0) < PROVIDER_TIMEOUT <= ORDER_LEASE_TIMEOUT:
    raise ImproperlyConfigured(
        f"PROVIDER_TIMEOUT={PROVIDER_TIMEOUT.total_seconds():g}s must be above 0 and at most "
        f"ORDER_LEASE_TIMEOUT ({ORDER_LEASE_TIMEOUT.total_seconds():g}s)."
    )
# The sweep re-sends a pending order (or an expired lease) older than this.
ORDER_REQUEUE_AFTER = env_duration("ORDER_REQUEUE_AFTER", "2m")
# After this many claims an order is failed instead of tried again (a poison order).
ORDER_MAX_ATTEMPTS = env_int("ORDER_MAX_ATTEMPTS", 12, minimum=1)
# Limits on POST /api/orders/.
ORDER_MAX_LINES = env_int("ORDER_MAX_LINES", 50, minimum=1)
ORDER_MAX_QUANTITY = env_int("ORDER_MAX_QUANTITY", 1000, minimum=1)
ORDER_MAX_BODY_BYTES = env_int("ORDER_MAX_BODY_BYTES", 16 * 1024, minimum=256)

# --- Reports ------------------------------------------------------------------
# Periods longer than this are split into slices aggregated in parallel (a chord).
REPORT_SLICE_DAYS = env_int("REPORT_SLICE_DAYS", 7, minimum=1)
# The longest custom range staff may ask for.
REPORT_MAX_RANGE_DAYS = env_int("REPORT_MAX_RANGE_DAYS", 366, minimum=1)
# A slice stops cleanly at its soft time limit and is re-queued; the hard limit
# (soft plus a minute, or twice the soft limit when that is shorter) kills it.
REPORT_SLICE_SOFT_TIME_LIMIT = env_int("REPORT_SLICE_SOFT_TIME_LIMIT", 300, minimum=1)
REPORT_SLICE_TIME_LIMIT = REPORT_SLICE_SOFT_TIME_LIMIT + min(60, REPORT_SLICE_SOFT_TIME_LIMIT)
# The sweep re-sends a report (or a slice) still waiting after this long, and
# finishes a report whose slices all finished this long ago but that is not done.
REPORT_REQUEUE_AFTER = env_duration("REPORT_REQUEUE_AFTER", "2m")
# A report whose generation, finish or any slice was started this many times
# without finishing (lost workers, time limits) is failed instead of tried again.
REPORT_MAX_ATTEMPTS = env_int("REPORT_MAX_ATTEMPTS", 4, minimum=1)
# Fault tests only: a dotted path to a function that every slice calls once it
# holds its claim, with (report_id, slice start, attempt, checkpoint); it can be
# slow, ignore time limits or kill its process. Empty (the default) in every deployment.
REPORT_SLICE_TEST_HOOK = env_str("REPORT_SLICE_TEST_HOOK", "")

# --- Operations -------------------------------------------------------------
# Beat counts as dead when its leader's heartbeat is older than this.
BEAT_HEARTBEAT_MAX_AGE = env_duration("BEAT_HEARTBEAT_MAX_AGE", "30s")
# Each worker sends itself a probe task this often; `manage.py worker_status` (its
# health check) fails once three intervals pass without proof that it takes work.
WORKER_PROBE_INTERVAL = env_duration("WORKER_PROBE_INTERVAL", "15s")
# Failures (/admin/ops/failures/) are kept this long, independent of task results.
FAILURE_RETENTION = env_duration("FAILURE_RETENTION", "30d")
# GET /metrics with "Authorization: Bearer <token>" (staff sessions work without it).
# Workers' metrics endpoints ask for the same token.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# /health/, /metrics and the overview reuse the workers' answer to a ping
# (a broadcast and a 0.5 s wait) until it is this old.
WORKER_PING_MAX_AGE = env_duration("WORKER_PING_MAX_AGE", "10s")
# A scheduled run must have succeeded this long plus its task's time limit
# after it was due, or its schedule is late (ops/lateness.py).
SCHEDULE_GRACE = env_duration("SCHEDULE_GRACE", "5m")
# An unsent email is past its deadline after its expires_at, or this long after
# it was queued: one by one (order emails, resets) or in bulk (campaigns, digests,
# which the rate limit spreads out).
EMAIL_SEND_DEADLINE = env_duration("EMAIL_SEND_DEADLINE", "15m")
EMAIL_BULK_SEND_DEADLINE = env_duration("EMAIL_BULK_SEND_DEADLINE", "1d")
# Each worker serves its own task metrics on this port (0: off); see ops/worker_metrics.py.
WORKER_METRICS_PORT = env_port("WORKER_METRICS_PORT", 0)
WORKER_METRICS_HOST = env_str("WORKER_METRICS_HOST", "127.0.0.1")
if WORKER_METRICS_PORT and not METRICS_TOKEN and WORKER_METRICS_HOST not in {"127.0.0.1", "localhost", "::1"}:
    raise ImproperlyConfigured(
        f"WORKER_METRICS_HOST={WORKER_METRICS_HOST} serves worker metrics beyond this machine; set METRICS_TOKEN too."
    )

# --- Celery -----------------------------------------------------------------
# Every Celery setting lives here with the CELERY_ prefix; config/celery.py reads
# them through the namespace. The README explains each one for operators.
CELERY_BROKER_URL = broker_url(env_str("CELERY_BROKER_URL", "filesystem://localhost/"))
# RabbitMQ (amqp:// and amqps://): quorum queues, see README "Celery" for what they change.
BROKER_IS_RABBITMQ = CELERY_BROKER_URL.startswith(("amqp://", "amqps://"))
# The longest delay any task is retried with; the visibility timeout must exceed it.
TASK_RETRY_BACKOFF_MAX = 600
# RabbitMQ drops a message from a quorum queue after this many deliveries (crashes,
# lost connections, rejects), so a message that kills its worker every time cannot
# loop for ever; the database sweeps still see the order or email it was about.
# Queue arguments cannot change once a queue exists: see README before changing it.
RABBITMQ_DELIVERY_LIMIT = 20
# Redis behind Sentinel (opt-in, sentinel:// URLs): the name the sentinels monitor the master under.
CELERY_BROKER_SENTINEL_MASTER = env_str("CELERY_BROKER_SENTINEL_MASTER", "")
# The transport for the URL's scheme and its options, each with its reason in config/brokers.py:
# Redis through the project's transport (one shared client per channel) with a 2-hour visibility
# timeout, RabbitMQ with publisher confirms, the file broker's folders under DATA_DIR polled every 0.1 s.
CELERY_BROKER_TRANSPORT = broker_transport(CELERY_BROKER_URL)
CELERY_BROKER_TRANSPORT_OPTIONS = transport_options(
    CELERY_BROKER_URL, DATA_DIR / "broker", CELERY_BROKER_SENTINEL_MASTER
)
# Keep retrying the broker when it is not up yet (compose start order, restarts).
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
# Never unpickle what arrives from the broker or the result store.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]

# django-celery-results' backend ("django-db"): core/results.py stores each state with
# one upsert instead of a SELECT, an INSERT or UPDATE and a commit, and
# ops/result_backend.py makes it survive a database restart in every worker process,
# the pool's main process included.
CELERY_RESULT_BACKEND = "ops.result_backend:DatabaseBackend"
# Store task name, args, kwargs, worker and queue, so the admin can show them.
CELERY_RESULT_EXTENDED = True
# Beat's built-in celery.backend_cleanup deletes results older than this, daily.
CELERY_RESULT_EXPIRES = env_duration("CELERY_RESULT_EXPIRES", "7d")
# Record STARTED, so staff can tell a running task from one still in the queue.
CELERY_TASK_TRACK_STARTED = True

# Acknowledge after the task finishes, so a crash redelivers it instead of losing it.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A child killed mid-task (OOM, SIGKILL) is retried like Task.retry(): it counts
# against max_retries, so a task that kills its worker every time ends FAILED
# instead of looping. The delay is the base task's default_retry_delay (seconds).
CELERY_TASK_RETRY_ON_WORKER_LOST = True
# Workers keep revoked task ids (DELETE /api/tasks/<id>/, celery revoke) in a file of
# their own, one per node name, so a restarted worker still refuses to run them.
(DATA_DIR / "worker-state").mkdir(parents=True, exist_ok=True)
CELERY_WORKER_STATE_DB = str(DATA_DIR / "worker-state" / "%n.db")
# Each worker also consumes a queue of its own (<node>.dq2), where it sends itself
# the liveness probe (ops/liveness.py).
CELERY_WORKER_DIRECT = True
# Take one message per free process: long tasks never sit behind another
# process's prefetched backlog, and acks_late keeps the rest on the broker.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Defaults for every task; tasks with known shapes set tighter ones.
CELERY_TASK_SOFT_TIME_LIMIT = 5 * 60
CELERY_TASK_TIME_LIMIT = 6 * 60
# When the broker connection drops, unacked tasks will be redelivered anyway, so
# stop running them instead of finishing work that someone else repeats.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# On shutdown (compose maps SIGTERM to a cold shutdown), running tasks get this
# long to finish before they are cancelled and requeued. Compose's
# stop_grace_period is a little longer.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env_int("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", 60, minimum=0)
# Logging is configured from LOGGING above, not by Celery.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Events for Flower and `celery events`: workers report every task they receive,
# start, finish, retry or fail.
CELERY_WORKER_SEND_TASK_EVENTS = True
# On RabbitMQ the events are sent without publisher confirms (ops/broker_amqp.py).
CELERY_WORKER_CONSUMER = "ops.broker_amqp:EventsWithoutConfirms"
# No extra "task-sent" event per publish: it is a second message to the broker on
# every enqueue (POST /api/orders/ spent a fifth of its time on it), and Flower
# learns of each task from the worker's task-received event anyway.
CELERY_TASK_SEND_SENT_EVENT = False

# Celery's Django fixup closes the database connection before and after every
# task; with the django-db result backend that is a new PostgreSQL connection per
# task (about 124 no-op tasks/s on 2 cores, against about 370/s with reuse).
# With a reuse limit the fixup only closes every N tasks, and ops.worker closes
# broken or CONN_MAX_AGE-expired connections around each task, so a connection
# that failed in one task never reaches the next one.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=0)

# Three queues by the urgency of the work. Kombu's Redis transport reads a
# worker's queues round-robin, so these names give no priority inside one
# worker: priority comes from giving each queue its own workers (compose does).
# Each queue gets its own routing key; without one, Celery binds them all to the
# key "default" and a message would land in every queue.
TASK_QUEUE_NAMES = ("high_priority", "default", "low_priority")
# RabbitMQ declares them as quorum queues on a topic exchange (config/brokers.py says why).
CELERY_TASK_QUEUES = task_queues(TASK_QUEUE_NAMES, rabbitmq=BROKER_IS_RABBITMQ, delivery_limit=RABBITMQ_DELIVERY_LIMIT)
if BROKER_IS_RABBITMQ:
    CELERY_TASK_DEFAULT_EXCHANGE = "tasks"
    CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
    CELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"
    # Quorum queues have no global QoS: the worker must set its prefetch per consumer
    # (Celery does once it sees a quorum queue; this makes the detection explicit).
    CELERY_WORKER_DETECT_QUORUM_QUEUES = True
    # Countdowns and ETAs (retries with backoff) wait in RabbitMQ's delay queues, not
    # unacknowledged in a worker's memory where consumer_timeout and prefetch limits
    # bite. Celery sets this up when the worker sees a quorum queue over a topic
    # exchange; the delay queues are quorum queues too.
    CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "quorum"
CELERY_TASK_DEFAULT_QUEUE = "default"
# Refuse to invent queues from typos: a task routed to an unknown queue fails loudly.
CELERY_TASK_CREATE_MISSING_QUEUES = False
# The routing table, task by task (config/task_options.py): bulk email on low_priority so it
# never delays order emails, then each app's default queue; anything else goes to "default".
CELERY_TASK_ROUTES = task_options.ROUTES
# Failures are stored for every task, so staff always find them in the admin and can retry
# them; which other states each task stores is decided task by task (config/task_options.py).
CELERY_TASK_STORE_ERRORS_EVEN_IF_IGNORED = True
CELERY_TASK_ANNOTATIONS = task_options.ANNOTATIONS

CELERY_TIMEZONE = TIME_ZONE
# Schedules live in the database and staff edit them in the admin.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Write last_run_at to the database after every send (the default is every
# 3 minutes), so a beat that takes over from a dead leader does not run again
# what the leader just sent.
CELERY_BEAT_SYNC_EVERY = 1
DJANGO_CELERY_BEAT_TZ_AWARE = True
