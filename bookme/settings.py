"""Settings for the BookMe escrow backend: environment variables only (django-environ).

Files: unless BOOKME_READ_ENV_FILES=0, `$BOOKME_STATE_DIR/chain.env` (default `var/`, written by
`manage.py localchain`)
and then `.env` are read; a variable already in the environment always wins, and the first
file that sets a variable wins over the later one. See docs/configuration.md for the table.
"""
from datetime import timedelta
from pathlib import Path

import environ

from common.config import Config

BASE_DIR = Path(__file__).resolve().parent.parent

_env = environ.Env()
# Local state of this checkout: the dev chain's settings, anvil's pid/log, beat's schedule.
STATE_DIR = Path(_env.str("BOOKME_STATE_DIR", default=str(BASE_DIR / "var")))
if _env.bool("BOOKME_READ_ENV_FILES", default=True):
    for _path in (STATE_DIR / "chain.env", BASE_DIR / ".env"):
        if _path.exists():
            environ.Env.read_env(str(_path))  # setdefault semantics: earlier files/environment win
cfg = Config(_env)

# --- Django core -----------------------------------------------------------------------
SECRET_KEY = cfg.str("DJANGO_SECRET_KEY")
DEBUG = cfg.bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = cfg.list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = cfg.list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "bookme.apps.ConsoleAdminConfig",  # django.contrib.admin with the operators' console site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "escrow",
    "chain_events",
    "reconciliation",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # admin/docs assets under gunicorn
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "bookme.urls"
WSGI_APPLICATION = "bookme.wsgi.application"

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

DATABASES = {"default": cfg.db_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bookme")}
DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.postgresql"
DATABASES["default"].setdefault("CONN_MAX_AGE", cfg.int("DATABASE_CONN_MAX_AGE", 60, minimum=0))
# psycopg prepares a statement only where the code asks (execute(..., prepare=True) on the hot
# paths, see common/db.py; Django's own queries bind client-side and are never prepared). Behind
# a transaction-mode pooler (PgBouncer) set DATABASE_PREPARED_STATEMENTS=false: None disables them.
DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
    2**31 - 1 if cfg.bool("DATABASE_PREPARED_STATEMENTS", True) else None
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = cfg.str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": cfg.str("CACHE_KEY_PREFIX", "bookme"),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# WhiteNoise serves the apps' static files straight from their packages (no collectstatic step).
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": cfg.str("LOG_LEVEL", "INFO")},
}

# --- API ---------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["escrow.parsers.LimitedJSONParser"],
    # ASCII-only JSON: a key echoed back in an error (an unknown field) may hold a lone
    # surrogate, which cannot be encoded as UTF-8; escaped, every string can.
    "UNICODE_JSON": False,
    "UNAUTHENTICATED_USER": None,
    # Per-IP rate limits identify the client by REMOTE_ADDR, or with N trusted proxies in front,
    # by the address the outermost of them saw in X-Forwarded-For. DRF's default (None) takes
    # the whole header, which any client can set to get a fresh limit per request.
    "NUM_PROXIES": cfg.int("API_TRUSTED_PROXIES", 0, minimum=0),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "BookMe escrow API",
    "DESCRIPTION": "Bookings paid in USDC through the BookingEscrow contract.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI assets served locally (no CDN at run time).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The headers of refusals (WWW-Authenticate, Retry-After), whichever operation answers them.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "escrow.schema.document_refusal_headers",
    ],
}

# --- Chain -------------------------------------------------------------------------------
CHAIN_RPC_URLS = cfg.url_list("CHAIN_RPC_URLS")
CHAIN_ID = cfg.int("CHAIN_ID", minimum=1)
ESCROW_CONTRACT_ADDRESS = cfg.address("ESCROW_CONTRACT_ADDRESS")
USDC_CONTRACT_ADDRESS = cfg.address("USDC_CONTRACT_ADDRESS")
CHAIN_START_BLOCK = cfg.int("CHAIN_START_BLOCK", 0, minimum=0)
CHAIN_CONFIRMATIONS = cfg.int("CHAIN_CONFIRMATIONS", 0, minimum=0)
# Blocks behind the head treated as final when the node has no `finalized` tag.
REORG_WINDOW = cfg.int("REORG_WINDOW", 128, minimum=1)
RPC_TIMEOUT_SECONDS = cfg.float("RPC_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# Secrets: wrapped so that repr/str never show them (admin, logs, error pages).
SIGNER_PRIVATE_KEY = cfg.private_key("SIGNER_PRIVATE_KEY")
OPERATOR_PRIVATE_KEY = cfg.private_key("OPERATOR_PRIVATE_KEY")

# --- Escrow policy -----------------------------------------------------------------------
AUTHORIZATION_TTL_SECONDS = cfg.int("AUTHORIZATION_TTL_SECONDS", 300, minimum=10)
DEFAULT_PLATFORM_FEE_RATE = cfg.int("DEFAULT_PLATFORM_FEE_RATE", 1000, minimum=0)
DEFAULT_INVITED_PLATFORM_FEE_RATE = cfg.int("DEFAULT_INVITED_PLATFORM_FEE_RATE", 500, minimum=0)
DEFAULT_INVITER_FEE_RATE = cfg.int("DEFAULT_INVITER_FEE_RATE", 500, minimum=0)

# --- Celery ------------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = cfg.bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TIMEZONE = "UTC"
# Threads rather than forked children: the tasks wait on RPC and PostgreSQL, and one process
# keeps every prometheus counter in the one registry the worker serves on WORKER_METRICS_PORT
# (forked children would count in registries nobody scrapes).
CELERY_WORKER_POOL = cfg.str("CELERY_WORKER_POOL", "threads")
# The worker's own /metrics (events processed, RPC errors, transactions sent happen there).
# 0 = off; bin/run sets 9101.
WORKER_METRICS_PORT = cfg.int("WORKER_METRICS_PORT", 0, minimum=0)
SCAN_INTERVAL_SECONDS = cfg.float("SCAN_INTERVAL_SECONDS", 2.0, minimum=0.2)
# Tasks are added to the schedule by the work that brings them.
CELERY_BEAT_SCHEDULE: dict = {}
CELERY_BEAT_SCHEDULE_FILENAME = str(STATE_DIR / "celerybeat-schedule")

HEALTH_HEAD_MAX_AGE = timedelta(seconds=cfg.int("HEALTH_HEAD_MAX_AGE_SECONDS", 120, minimum=1))
# Health of the chain sync: degraded when the scanner is more blocks behind the head than this,
# or has not finished a scan for this long (the scan runs every SCAN_INTERVAL_SECONDS).
HEALTH_SYNC_MAX_LAG_BLOCKS = cfg.int("HEALTH_SYNC_MAX_LAG_BLOCKS", 10, minimum=0)
HEALTH_SYNC_MAX_SCAN_AGE = timedelta(seconds=cfg.int("HEALTH_SYNC_MAX_SCAN_AGE_SECONDS", 120, minimum=1))

# --- Escrow API (issue 3) -------------------------------------------------------------------
# Errors of the escrow domain (illegal transitions, conflicts, bad input, RPC outages) become
# JSON 4xx/503 answers instead of 500s.
REST_FRAMEWORK["EXCEPTION_HANDLER"] = "escrow.exceptions.api_exception_handler"
# One named enum per choice set in the OpenAPI schema (booking status appears in several fields).
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    "BookingStatusEnum": "escrow.models.BookingStatus",
    "TransactionSubmissionStatusEnum": "escrow.services.SUBMISSION_STATUSES",
}
# Sign-In with Ethereum: the authorities (host[:port]) a message may name as its domain;
# the message's URI must point at one of them too.
SIWE_DOMAIN = cfg.list("SIWE_DOMAIN", ["localhost:8000"])
SIWE_NONCE_TTL_SECONDS = cfg.int("SIWE_NONCE_TTL_SECONDS", 300, minimum=10)
# Anonymous sign-in endpoints (nonce, verify), per client IP.
SIWE_THROTTLE_RATE = cfg.str("SIWE_THROTTLE_RATE", "30/minute")
WALLET_TOKEN_TTL_SECONDS = cfg.int("WALLET_TOKEN_TTL_SECONDS", 24 * 3600, minimum=60)
# authorize-payment and request-cancellation, per wallet.
AUTHORIZATION_THROTTLE_RATE = cfg.str("AUTHORIZATION_THROTTLE_RATE", "10/minute")
# Creating bookings and submit-transaction, per wallet.
WALLET_WRITE_THROTTLE_RATE = cfg.str("WALLET_WRITE_THROTTLE_RATE", "30/minute")
# How far ahead a booking may be scheduled: a booking never paid stays PENDING_PAYMENT until its
# scheduled time, and every open booking is read on chain by each reconciliation run.
BOOKING_MAX_DAYS_AHEAD = cfg.int("BOOKING_MAX_DAYS_AHEAD", 366, minimum=1)
# Cancellation policy (see escrow/cancellation.py): more than FULL_REFUND_HOURS before the
# scheduled time the customer gets everything back; from then until PARTIAL_REFUND_HOURS
# before, PARTIAL_REFUND_BPS of the amount; later (or after the scheduled time) LATE_REFUND_BPS.
# What the customer does not get back is paid out like a completion (fees at the booking's rates).
CANCELLATION_FULL_REFUND_HOURS = cfg.int("CANCELLATION_FULL_REFUND_HOURS", 24, minimum=0)
CANCELLATION_PARTIAL_REFUND_HOURS = cfg.int("CANCELLATION_PARTIAL_REFUND_HOURS", 2, minimum=0)
CANCELLATION_PARTIAL_REFUND_BPS = cfg.int("CANCELLATION_PARTIAL_REFUND_BPS", 5000, minimum=0)
CANCELLATION_LATE_REFUND_BPS = cfg.int("CANCELLATION_LATE_REFUND_BPS", 0, minimum=0)
# Unused authorizations are only treated as dead this long after their expiry, so a payment
# mined just before the expiry has time to reach the scanner first.
AUTHORIZATION_EXPIRY_GRACE_SECONDS = cfg.int("AUTHORIZATION_EXPIRY_GRACE_SECONDS", 120, minimum=0)


def _check_escrow_policy() -> None:
    """Limits cfg.int cannot express; one line naming the variable, like every config error."""
    from common.config import ConfigurationError

    for name, value in (
        ("CANCELLATION_PARTIAL_REFUND_BPS", CANCELLATION_PARTIAL_REFUND_BPS),
        ("CANCELLATION_LATE_REFUND_BPS", CANCELLATION_LATE_REFUND_BPS),
    ):
        if value > 10_000:
            raise ConfigurationError(name, "must be at most 10000 (basis points)")
    if CANCELLATION_PARTIAL_REFUND_HOURS > CANCELLATION_FULL_REFUND_HOURS:
        raise ConfigurationError("CANCELLATION_PARTIAL_REFUND_HOURS", "must not exceed CANCELLATION_FULL_REFUND_HOURS")
    for name, value, cap in (
        ("DEFAULT_PLATFORM_FEE_RATE", DEFAULT_PLATFORM_FEE_RATE, 2_000),
        ("DEFAULT_INVITED_PLATFORM_FEE_RATE", DEFAULT_INVITED_PLATFORM_FEE_RATE, 2_000),
        ("DEFAULT_INVITER_FEE_RATE", DEFAULT_INVITER_FEE_RATE, 1_000),
    ):
        if value > cap:
            raise ConfigurationError(name, f"must be at most {cap} (the contract's cap)")
    for name, rate in (
        ("AUTHORIZATION_THROTTLE_RATE", AUTHORIZATION_THROTTLE_RATE),
        ("WALLET_WRITE_THROTTLE_RATE", WALLET_WRITE_THROTTLE_RATE),
        ("SIWE_THROTTLE_RATE", SIWE_THROTTLE_RATE),
    ):
        count, _, period = rate.partition("/")
        if not count.isdigit() or not period or period[0] not in "smhd":
            raise ConfigurationError(name, 'must look like "10/minute" (a count per s, m, h or d)')


_check_escrow_policy()

# --- Chain sync (issue 4) ----------------------------------------------------------------
# Owned by chain_events. See chain_events/scanner.py for what each knob does.
# eth_getLogs block ranges: start here, never exceed the max (providers cap ranges at
# 1,000-10,000 blocks), shrink on range/size errors, grow while results stay sparse.
CHAIN_LOG_RANGE_INITIAL = cfg.int("CHAIN_LOG_RANGE_INITIAL", 1000, minimum=1)
CHAIN_LOG_RANGE_MAX = cfg.int("CHAIN_LOG_RANGE_MAX", 10_000, minimum=1)
# Providers cap one eth_getLogs answer at 10,000 logs; a range that returns more is refetched
# smaller (also keeps memory per range bounded).
CHAIN_LOG_MAX_RESULTS = cfg.int("CHAIN_LOG_MAX_RESULTS", 10_000, minimum=10)
# A node without a result cap (anvil, a self-hosted node) answers a range that grew over an
# empty stretch and ran into a dense one with every log in it (100,000s): an answer larger
# than this is dropped unread and the range refetched smaller. This, not the result count,
# bounds the scanner's memory: a BookingCreatedAndPaid log is ~1 KB of JSON, so 8 MiB is
# ~8,000 logs; ranges aim at a quarter of either limit.
CHAIN_LOG_MAX_ANSWER_BYTES = cfg.int("CHAIN_LOG_MAX_ANSWER_BYTES", 8 * 1024 * 1024, minimum=64 * 1024)
# Headers fetched per JSON-RPC batch for the unfinalized window.
CHAIN_HEADER_BATCH = cfg.int("CHAIN_HEADER_BATCH", 100, minimum=1)
# Apply consecutive ranges in two transactions at once (two connections; each commits after
# the one before it, see chain_events.scanner._ApplyLanes). Off: one range at a time.
CHAIN_APPLY_PARALLEL = cfg.bool("CHAIN_APPLY_PARALLEL", True)
# One scan run stops after this long (the next beat continues where it stopped).
CHAIN_SCAN_MAX_SECONDS = cfg.float("CHAIN_SCAN_MAX_SECONDS", 50.0, minimum=1.0)
# After catching up, the scan task keeps following the head this long, polling every
# CHAIN_SCAN_POLL_SECONDS, so a payment is seen well within a beat interval. 0 = beat only.
CHAIN_SCAN_FOLLOW_SECONDS = cfg.float("CHAIN_SCAN_FOLLOW_SECONDS", SCAN_INTERVAL_SECONDS, minimum=0.0)
CHAIN_SCAN_POLL_SECONDS = cfg.float("CHAIN_SCAN_POLL_SECONDS", 0.25, minimum=0.05)
# Failed event handling: exponential backoff from the base, DEAD_LETTER after max attempts.
CHAIN_EVENT_MAX_ATTEMPTS = cfg.int("CHAIN_EVENT_MAX_ATTEMPTS", 5, minimum=1)
CHAIN_EVENT_RETRY_BASE_SECONDS = cfg.float("CHAIN_EVENT_RETRY_BASE_SECONDS", 30.0, minimum=0.0)
CHAIN_EVENT_RETRY_MAX_SECONDS = cfg.float("CHAIN_EVENT_RETRY_MAX_SECONDS", 3600.0, minimum=1.0)
RETRY_FAILED_EVENTS_INTERVAL_SECONDS = cfg.float("RETRY_FAILED_EVENTS_INTERVAL_SECONDS", 30.0, minimum=1.0)
# RPC client: retries of a whole failover round, backoff base, cooldown of a failed endpoint.
RPC_RETRIES = cfg.int("RPC_RETRIES", 2, minimum=0)
RPC_BACKOFF_SECONDS = cfg.float("RPC_BACKOFF_SECONDS", 0.25, minimum=0.0)
RPC_COOLDOWN_SECONDS = cfg.float("RPC_COOLDOWN_SECONDS", 15.0, minimum=0.0)

CELERY_BEAT_SCHEDULE["scan-chain"] = {
    "task": "chain_events.scan_chain",
    "schedule": SCAN_INTERVAL_SECONDS,
    # A scan that could not start in time is pointless: the next beat sends a fresh one.
    "options": {"expires": max(10.0, 5 * SCAN_INTERVAL_SECONDS)},
}
CELERY_BEAT_SCHEDULE["retry-failed-chain-events"] = {
    "task": "chain_events.retry_failed_events",
    "schedule": RETRY_FAILED_EVENTS_INTERVAL_SECONDS,
    "options": {"expires": max(10.0, RETRY_FAILED_EVENTS_INTERVAL_SECONDS)},
}
# --- end Chain sync (issue 4)

# --- Reconciliation, backend transactions, emergency pause (issue 5) ------------------------
# Owned by reconciliation. See reconciliation/reconcile.py, operations.py and transactions.py.
RECONCILE_INTERVAL_SECONDS = cfg.float("RECONCILE_INTERVAL_SECONDS", 180.0, minimum=5.0)
# Booking ids per getBookings eth_call, and eth_calls per JSON-RPC batch (one HTTP round trip).
RECONCILE_BATCH_SIZE = cfg.int("RECONCILE_BATCH_SIZE", 500, minimum=1)
RECONCILE_CALLS_PER_REQUEST = cfg.int("RECONCILE_CALLS_PER_REQUEST", 10, minimum=1)
# Finished bookings (COMPLETED, CANCELLED, EXPIRED, FAILED) are re-checked this long after their last change.
RECONCILE_RECENT_SECONDS = cfg.int("RECONCILE_RECENT_SECONDS", 24 * 3600, minimum=0)
# Booking ids per eth_getLogs topic OR-list when fetching the logs of bookings the chain is ahead on.
RECONCILE_LOG_TOPIC_BATCH = cfg.int("RECONCILE_LOG_TOPIC_BATCH", 100, minimum=1)
# Operator completion: PAID bookings this long after their scheduled time, not under dispute.
AUTO_COMPLETE_AFTER_SECONDS = cfg.int("AUTO_COMPLETE_AFTER_SECONDS", 2 * 3600, minimum=0)
AUTO_COMPLETE_INTERVAL_SECONDS = cfg.float("AUTO_COMPLETE_INTERVAL_SECONDS", 300.0, minimum=5.0)
AUTO_COMPLETE_MAX_PER_RUN = cfg.int("AUTO_COMPLETE_MAX_PER_RUN", 50, minimum=1)
# Orphans (paid on chain, unknown to the database): refunded automatically only if enabled,
# and only once they are this old (time for a lagging database restore/replay to claim them).
ORPHAN_AUTO_REFUND = cfg.bool("ORPHAN_AUTO_REFUND", False)
ORPHAN_REFUND_GRACE_SECONDS = cfg.int("ORPHAN_REFUND_GRACE_SECONDS", 3600, minimum=0)
ORPHAN_AUTO_REFUND_INTERVAL_SECONDS = cfg.float("ORPHAN_AUTO_REFUND_INTERVAL_SECONDS", 300.0, minimum=5.0)
# Transactions of the operator account (reconciliation/transactions.py).
TX_GAS_MARGIN_PERCENT = cfg.int("TX_GAS_MARGIN_PERCENT", 20, minimum=0)
TX_FEE_HISTORY_BLOCKS = cfg.int("TX_FEE_HISTORY_BLOCKS", 10, minimum=1)
TX_MIN_PRIORITY_FEE_WEI = cfg.int("TX_MIN_PRIORITY_FEE_WEI", 1_000_000, minimum=0)  # 0.001 gwei (Base)
TX_MAX_FEE_PER_GAS_WEI = cfg.int("TX_MAX_FEE_PER_GAS_WEI", 500 * 10**9, minimum=1)
TX_FEE_BUMP_PERCENT = cfg.float("TX_FEE_BUMP_PERCENT", 15.0, minimum=12.5)
TX_REPLACE_AFTER_SECONDS = cfg.float("TX_REPLACE_AFTER_SECONDS", 30.0, minimum=0.1)
TX_MAX_REPLACEMENTS = cfg.int("TX_MAX_REPLACEMENTS", 5, minimum=0)
TX_RECEIPT_TIMEOUT_SECONDS = cfg.float("TX_RECEIPT_TIMEOUT_SECONDS", 180.0, minimum=1.0)
TX_POLL_SECONDS = cfg.float("TX_POLL_SECONDS", 0.5, minimum=0.01)
# Optional: unpause() is owner-only on chain. Set only where the backend may hold the owner key
# (development, staging); in production the owner (a multisig) unpauses.
CONTRACT_OWNER_PRIVATE_KEY = cfg.private_key("CONTRACT_OWNER_PRIVATE_KEY", None)
# The contract's paused() view is cached this long (health checks call it on every request).
CONTRACT_PAUSED_CACHE_SECONDS = cfg.int("CONTRACT_PAUSED_CACHE_SECONDS", 10, minimum=0)

CELERY_BEAT_SCHEDULE["reconcile-bookings"] = {
    "task": "reconciliation.reconcile_bookings",
    "schedule": RECONCILE_INTERVAL_SECONDS,
    "options": {"expires": RECONCILE_INTERVAL_SECONDS},
}
CELERY_BEAT_SCHEDULE["auto-complete-bookings"] = {
    "task": "reconciliation.auto_complete_bookings",
    "schedule": AUTO_COMPLETE_INTERVAL_SECONDS,
    "options": {"expires": AUTO_COMPLETE_INTERVAL_SECONDS},
}
# Operator transactions whose receipt wait ended without an outcome get one (mined, replaced, dropped).
CELERY_BEAT_SCHEDULE["settle-stale-transactions"] = {
    "task": "reconciliation.settle_stale_transactions",
    "schedule": 60.0,
    "options": {"expires": 60.0},
}
CELERY_BEAT_SCHEDULE["auto-refund-orphans"] = {
    "task": "reconciliation.auto_refund_orphans",
    "schedule": ORPHAN_AUTO_REFUND_INTERVAL_SECONDS,
    "options": {"expires": ORPHAN_AUTO_REFUND_INTERVAL_SECONDS},
}
# --- end Reconciliation (issue 5)
