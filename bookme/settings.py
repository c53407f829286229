"""Settings for the BookMe escrow backend: environment variables only (django-environ).

Files: unless BOOKME_READ_ENV_FILES=0, `$BOOKME_STATE_DIR/chain.env` (default `var/`, written by
`manage.py localchain`)
and then `.env` are read; a variable already in the environment always wins, and the first
file that sets a variable wins over the later one. See docs/configuration.md for the table.
"""
import ipaddress
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import environ

from common.config import PROCESS_ROLES, Config, ConfigurationError, Secret

BASE_DIR = Path(__file__).resolve().parent.parent

_env = environ.Env()
# Local state of this checkout: the dev chain's settings, anvil's pid/log, beat's schedule.
STATE_DIR = Path(_env.str("BOOKME_STATE_DIR", default=str(BASE_DIR / "var")))
_own_environment = frozenset(_env.ENVIRON)  # before the files: keys that send are refused only from here
if _env.bool("BOOKME_READ_ENV_FILES", default=True):
    for _path in (STATE_DIR / "chain.env", BASE_DIR / ".env"):
        if _path.exists():
            environ.Env.read_env(str(_path))  # setdefault semantics: earlier files/environment win
cfg = Config(_env, from_files=frozenset(_env.ENVIRON) - _own_environment)

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
    "axes",  # console sign-in lockout (see "Console sign-in" below)
    "corsheaders",  # browser clients on other origins (see "CORS" below)
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "escrow",
    "chain_events",
    "reconciliation",
    "notifications",
    "webhooks",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # As high as possible, as django-cors-headers requires: before anything that answers itself
    # (HTTPS redirect, WhiteNoise, CommonMiddleware), so preflights and refusals carry its headers.
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # admin/docs assets under gunicorn
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes requires: answers locked-out sign-ins
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

# --- HTTPS, cookies, HSTS (manage.py check --deploy) -----------------------------------------
# Served over HTTPS: by default whenever DEBUG is off. Plain HTTP is then redirected to HTTPS
# (except health and /metrics, which probes and scrapers inside the network call over HTTP),
# the session and CSRF cookies are Secure, and browsers are told to use HTTPS only (HSTS).
HTTPS_ONLY = cfg.bool("DJANGO_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = HTTPS_ONLY
SECURE_REDIRECT_EXEMPT = [r"^api/health/", r"^api/health$", r"^metrics$"]  # health without its slash too
SESSION_COOKIE_SECURE = HTTPS_ONLY
CSRF_COOKIE_SECURE = HTTPS_ONLY
SECURE_HSTS_SECONDS = cfg.int("DJANGO_HSTS_SECONDS", 365 * 24 * 3600 if HTTPS_ONLY else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = cfg.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = cfg.bool("DJANGO_HSTS_PRELOAD", True)
# Behind a proxy that terminates TLS, the header it sets to "https" on requests that came over
# HTTPS (X-Forwarded-Proto, usually). Without it every request looks like plain HTTP and is
# redirected for ever. Only set it when the proxy always sets (or strips) that header itself.
_ssl_header = cfg.str("DJANGO_SECURE_PROXY_SSL_HEADER", None)
if _ssl_header is not None and not re.fullmatch(r"[A-Za-z0-9-]+", _ssl_header):
    raise ConfigurationError("DJANGO_SECURE_PROXY_SSL_HEADER", "must be a header name such as X-Forwarded-Proto")
SECURE_PROXY_SSL_HEADER = ("HTTP_" + _ssl_header.upper().replace("-", "_"), "https") if _ssl_header else None

# --- API ---------------------------------------------------------------------------------
# Per-address limits identify the client by REMOTE_ADDR, or with N trusted proxies in front, by
# the address the outermost of them saw in X-Forwarded-For (escrow.throttling.client_address).
# Left at 0 behind a proxy, every client has the proxy's address and shares one budget: the
# first request with an X-Forwarded-For header says so in the log.
API_TRUSTED_PROXIES = cfg.int("API_TRUSTED_PROXIES", 0, minimum=0)
# Every caller of the OpenAPI schema and docs, per client address (escrow.throttling.PublicThrottle).
# Each view anyone may call has a per-address throttle (tests/foundation/test_public_surface.py).
PUBLIC_THROTTLE_RATE = cfg.str("PUBLIC_THROTTLE_RATE", "60/minute")
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["escrow.parsers.LimitedJSONParser"],
    # ASCII-only JSON: a key echoed back in an error (an unknown field) may hold a lone
    # surrogate, which cannot be encoded as UTF-8; escaped, every string can.
    "UNICODE_JSON": False,
    # The API's own ways in, on every view (the schema and docs too): a wallet's bearer token and
    # a staff session. DRF's default also takes Basic authentication, which would make any view a
    # password-guessing oracle for staff accounts, outside the console's sign-in lockout.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "escrow.authentication.WalletTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "UNAUTHENTICATED_USER": None,
    # For DRF's own get_ident, should a throttle not use escrow.throttling's: DRF's default (None)
    # takes the whole header, which any client can set to get a fresh limit per request.
    "NUM_PROXIES": API_TRUSTED_PROXIES,
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
# What this process is (web, worker, beat, command: common.config.PROCESS_ROLES); it decides
# which keys the process may hold.
PROCESS_ROLE = cfg.choice("BOOKME_PROCESS_ROLE", PROCESS_ROLES, "command")
# Secrets: wrapped so that repr/str never show them (admin, logs, error pages).
# The signer key signs authorizations, in the web process.
SIGNER_PRIVATE_KEY = cfg.private_key("SIGNER_PRIVATE_KEY")
# The operator key sends transactions: required by the worker (console actions queue their sends
# for it), refused by the web and beat processes, optional for commands (manage.py emergency_pause
# and refund_orphan send directly where it is set).
OPERATOR_PRIVATE_KEY = cfg.sending_key("OPERATOR_PRIVATE_KEY", role=PROCESS_ROLE, required_in=("worker",))

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

# --- The public surface: health, metrics, console sign-in (issue 15) -----------------------
# Health never asks the chain from a request: the worker reads the chain part (RPC head, contract
# paused, chain identity) every HEALTH_CHAIN_REFRESH_SECONDS into the cache (bookme.tasks), the web
# process only reads it; older than HEALTH_CHAIN_MAX_AGE_SECONDS it is reported "unknown".
HEALTH_CHAIN_REFRESH_SECONDS = cfg.float("HEALTH_CHAIN_REFRESH_SECONDS", 15.0, minimum=1.0)
HEALTH_CHAIN_MAX_AGE = timedelta(seconds=cfg.int("HEALTH_CHAIN_MAX_AGE_SECONDS", 60, minimum=1))
# GET /api/health/ per client address (load balancers probe it; /api/health/live/ is not limited).
HEALTH_THROTTLE_RATE = cfg.str("HEALTH_THROTTLE_RATE", "120/minute")
CELERY_IMPORTS = ["bookme.tasks"]  # not an app of its own: autodiscovery does not find it
CELERY_BEAT_SCHEDULE["refresh-chain-health"] = {
    "task": "bookme.refresh_chain_health",
    "schedule": HEALTH_CHAIN_REFRESH_SECONDS,
    "options": {"expires": HEALTH_CHAIN_REFRESH_SECONDS},
}

# /metrics of the web process: a scraper sends `Authorization: Bearer <METRICS_BEARER_TOKEN>`, or
# scrapes from an address in METRICS_ALLOWED_ADDRESSES (addresses or networks; the client address
# as escrow.throttling.client_address sees it). Anyone else gets 403. The worker's metrics port
# (WORKER_METRICS_PORT) listens on 127.0.0.1 only.
_metrics_token = cfg.str("METRICS_BEARER_TOKEN", None)
if _metrics_token is not None and len(_metrics_token) < 32:
    raise ConfigurationError("METRICS_BEARER_TOKEN", "must be at least 32 characters")
METRICS_BEARER_TOKEN = Secret(_metrics_token) if _metrics_token else None


def _networks(name: str, default: list[str]) -> list:
    try:
        return [ipaddress.ip_network(item, strict=False) for item in cfg.list(name, default)]
    except ValueError:
        raise ConfigurationError(name, "must be a comma-separated list of IP addresses or networks") from None


METRICS_ALLOWED_ADDRESSES = _networks("METRICS_ALLOWED_ADDRESSES", ["127.0.0.1", "::1"])

# Console sign-in (django-axes): CONSOLE_LOGIN_FAILURE_LIMIT failed sign-ins from one client
# address (an IPv6 /64) lock that address out of the console's sign-in for
# CONSOLE_LOGIN_LOCKOUT_MINUTES; a success resets the count. Every failure is a row (axes'
# AccessAttempt and AccessFailureLog, in the console) and a WARNING log line.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = cfg.int("CONSOLE_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=cfg.int("CONSOLE_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
# Per address, not per user name: a lockout by name would let anyone lock a staff member out.
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_CLIENT_IP_CALLABLE = "escrow.throttling.rate_limit_address"
AXES_LOCKOUT_CALLABLE = "bookme.views.console_sign_in_locked_out"
AXES_RESET_ON_SUCCESS = True
AXES_ENABLE_ACCESS_FAILURE_LOG = True
# Masked in the log line (a password typed into the user-name field must not reach the logs); the
# rows keep it for staff.
AXES_SENSITIVE_PARAMETERS = ["username"]

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
# the message's URI must point at one of them too. The domain is the FRONTEND's (the page the
# wallet signs on, which wallets check against the page's origin), not the API's: list every
# frontend's. bin/run defaults it to its own address (127.0.0.1:$WEB_PORT, localhost:$WEB_PORT).
SIWE_DOMAIN = cfg.list("SIWE_DOMAIN", ["localhost:8000"])

# --- CORS (django-cors-headers): browser clients on other origins ---------------------------
# Origins (scheme://host[:port]) whose pages may call the API; none by default (production
# lists its frontends; bin/run sets the usual dev-server origins). Regexes for preview deploys.
CORS_ALLOWED_ORIGINS = cfg.list("CORS_ALLOWED_ORIGINS", [])
if not all(re.fullmatch(r"https?://[^\s/]+", origin) for origin in CORS_ALLOWED_ORIGINS):
    raise ConfigurationError("CORS_ALLOWED_ORIGINS", "must be a comma-separated list of origins (http(s)://host[:port])")
CORS_ALLOWED_ORIGIN_REGEXES = cfg.list("CORS_ALLOWED_ORIGIN_REGEXES", [])
for _pattern in CORS_ALLOWED_ORIGIN_REGEXES:
    try:
        re.compile(_pattern)
    except re.error:
        raise ConfigurationError(
            "CORS_ALLOWED_ORIGIN_REGEXES", "must be a comma-separated list of regular expressions"
        ) from None
CORS_URLS_REGEX = r"^/api/.*$"  # the API only: the console and /metrics are never cross-origin
# The library's default request headers include the two the API needs: Authorization (bearer
# token) and Content-Type (JSON). Bearer tokens, not cookies: no credentials.
CORS_ALLOW_CREDENTIALS = False
# Refusals tell clients when to come back and how to authenticate: let browser code read it.
CORS_EXPOSE_HEADERS = ["Retry-After", "WWW-Authenticate"]
CORS_PREFLIGHT_MAX_AGE = cfg.int("CORS_PREFLIGHT_MAX_AGE_SECONDS", 3600, minimum=0)
SIWE_NONCE_TTL_SECONDS = cfg.int("SIWE_NONCE_TTL_SECONDS", 300, minimum=10)
# Anonymous sign-in endpoints (nonce, verify), per client IP.
SIWE_THROTTLE_RATE = cfg.str("SIWE_THROTTLE_RATE", "30/minute")
WALLET_TOKEN_TTL_SECONDS = cfg.int("WALLET_TOKEN_TTL_SECONDS", 24 * 3600, minimum=60)
# authorize-payment and request-cancellation, per wallet.
AUTHORIZATION_THROTTLE_RATE = cfg.str("AUTHORIZATION_THROTTLE_RATE", "10/minute")
# Creating bookings, submit-transaction, making and redeeming invite codes, per wallet.
WALLET_WRITE_THROTTLE_RATE = cfg.str("WALLET_WRITE_THROTTLE_RATE", "30/minute")
# GET /api/transactions/{hash}/, per wallet (a lookup the database cannot answer asks the RPC node).
TRANSACTION_LOOKUP_THROTTLE_RATE = cfg.str("TRANSACTION_LOOKUP_THROTTLE_RATE", "60/minute")
# How far ahead a booking may be scheduled: a booking never paid stays PENDING_PAYMENT until its
# scheduled time, and every open booking is read on chain by each reconciliation run.
BOOKING_MAX_DAYS_AHEAD = cfg.int("BOOKING_MAX_DAYS_AHEAD", 366, minimum=1)
# Booking spam: bookings waiting for payment (PENDING_PAYMENT) per customer wallet and per
# provider; one more is refused with 409. A booking waiting this long with no live payment
# authorization expires (reconciliation runs the expiry; authorize-payment reopens it).
MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET = cfg.int("MAX_OPEN_UNPAID_BOOKINGS_PER_WALLET", 5, minimum=1)
MAX_OPEN_UNPAID_BOOKINGS_PER_PROVIDER = cfg.int("MAX_OPEN_UNPAID_BOOKINGS_PER_PROVIDER", 50, minimum=1)
UNPAID_BOOKING_TTL_SECONDS = cfg.int("UNPAID_BOOKING_TTL_SECONDS", 1800, minimum=60)
# Referrals (escrow/referrals.py): invite codes one wallet may hold.
MAX_INVITE_CODES_PER_WALLET = cfg.int("MAX_INVITE_CODES_PER_WALLET", 10, minimum=1)
# Purged hourly (escrow/retention.py): wallet tokens this long after they expired or were
# revoked; payment and cancellation authorizations never used, of finished bookings, this long
# after they expired (used ones are kept for good).
WALLET_TOKEN_RETENTION_DAYS = cfg.int("WALLET_TOKEN_RETENTION_DAYS", 7, minimum=0)
AUTHORIZATION_RETENTION_DAYS = cfg.int("AUTHORIZATION_RETENTION_DAYS", 30, minimum=1)
CELERY_BEAT_SCHEDULE["purge-expired-records"] = {
    "task": "escrow.purge_expired_records",
    "schedule": 3600.0,
    "options": {"expires": 3600.0},
}
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
# Cancellation authorizations signed per booking in all (one live at a time): a customer cannot
# keep a booking out of auto-complete by asking again each time the last request lapses.
MAX_CANCELLATION_REQUESTS_PER_BOOKING = cfg.int("MAX_CANCELLATION_REQUESTS_PER_BOOKING", 3, minimum=1)


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
        ("TRANSACTION_LOOKUP_THROTTLE_RATE", TRANSACTION_LOOKUP_THROTTLE_RATE),
        ("SIWE_THROTTLE_RATE", SIWE_THROTTLE_RATE),
        ("PUBLIC_THROTTLE_RATE", PUBLIC_THROTTLE_RATE),
        ("HEALTH_THROTTLE_RATE", HEALTH_THROTTLE_RATE),
    ):
        count, _, period = rate.partition("/")
        if not count.isdigit() or not period or period[0] not in "smhd":
            raise ConfigurationError(name, 'must look like "10/minute" (a count per s, m, h or d)')


_check_escrow_policy()

# --- Chain sync (issue 4) ----------------------------------------------------------------
# Owned by chain_events. See chain_events/scanner.py and the modules it names for what each knob does.
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
# the one before it, see chain_events.lanes.ApplyLanes). Off: one range at a time.
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
TX_FEE_BUMP_PERCENT = cfg.decimal("TX_FEE_BUMP_PERCENT", "15", minimum=Decimal("12.5"))
TX_REPLACE_AFTER_SECONDS = cfg.float("TX_REPLACE_AFTER_SECONDS", 30.0, minimum=0.1)
TX_MAX_REPLACEMENTS = cfg.int("TX_MAX_REPLACEMENTS", 5, minimum=0)
TX_RECEIPT_TIMEOUT_SECONDS = cfg.float("TX_RECEIPT_TIMEOUT_SECONDS", 180.0, minimum=1.0)
TX_POLL_SECONDS = cfg.float("TX_POLL_SECONDS", 0.5, minimum=0.01)
# An operator transaction still unmined this long after it was sent raises OperatorTransactionStuck.
TX_STUCK_ALERT_SECONDS = cfg.float("TX_STUCK_ALERT_SECONDS", 600.0, minimum=1.0)
# Client polling advice for a reported transaction not mined yet (submit-transaction, GET
# /api/transactions/{hash}/): ask again after TX_CLIENT_POLL_SECONDS (Retry-After); one the node
# has still never seen TX_CLIENT_RESUBMIT_AFTER_SECONDS after it was sent was dropped: send it again.
TX_CLIENT_POLL_SECONDS = cfg.int("TX_CLIENT_POLL_SECONDS", 3, minimum=1)
TX_CLIENT_RESUBMIT_AFTER_SECONDS = cfg.int("TX_CLIENT_RESUBMIT_AFTER_SECONDS", 60, minimum=1)
# Optional: unpause() is owner-only on chain. Set only where the backend may hold the owner key
# (development, staging); in production the owner (a multisig) unpauses.
CONTRACT_OWNER_PRIVATE_KEY = cfg.sending_key("CONTRACT_OWNER_PRIVATE_KEY", role=PROCESS_ROLE)
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
# Operator transactions get their outcome (mined, replaced, dropped), mined ones inside the reorg
# window are checked against the chain, and the operator's nonces are brought in line with it.
CELERY_BEAT_SCHEDULE["settle-transactions"] = {
    "task": "reconciliation.settle_transactions",
    "schedule": 60.0,
    "options": {"expires": 60.0},
}
CELERY_BEAT_SCHEDULE["auto-refund-orphans"] = {
    "task": "reconciliation.auto_refund_orphans",
    "schedule": ORPHAN_AUTO_REFUND_INTERVAL_SECONDS,
    "options": {"expires": ORPHAN_AUTO_REFUND_INTERVAL_SECONDS},
}
# --- end Reconciliation (issue 5)

# --- Ledger check (issue 17): escrow balance, fees, payouts, earnings, statuses and operator
# nonces against the chain at one pinned block (reconciliation/ledger.py, alert LedgerMismatch).
LEDGER_CHECK_INTERVAL_SECONDS = cfg.float("LEDGER_CHECK_INTERVAL_SECONDS", 300.0, minimum=5.0)
CELERY_BEAT_SCHEDULE["check-ledger"] = {
    "task": "reconciliation.check_ledger",
    "schedule": LEDGER_CHECK_INTERVAL_SECONDS,
    "options": {"expires": LEDGER_CHECK_INTERVAL_SECONDS},
}
# --- end Ledger check (issue 17)

# --- Webhooks (issue 16) --------------------------------------------------------------------
# Owned by webhooks. See webhooks/fanout.py, delivery.py and url_safety.py.
# Only https:// endpoints, and only public addresses; these two allow http:// and private,
# loopback, link-local addresses for local development and tests. Never in production.
WEBHOOK_ALLOW_HTTP = cfg.bool("WEBHOOK_ALLOW_HTTP", False)
WEBHOOK_ALLOW_PRIVATE_ADDRESSES = cfg.bool("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", False)
# One POST: connect and read timeout each. Redirects are never followed (a 3xx is a failure).
WEBHOOK_TIMEOUT_SECONDS = cfg.float("WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.05)
# Attempts per delivery before it is DEAD; the wait after the n-th failed attempt is
# min(ceiling, base * 2^(n-1)), of which a random half (jitter).
WEBHOOK_MAX_ATTEMPTS = cfg.int("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
WEBHOOK_RETRY_BASE_SECONDS = cfg.float("WEBHOOK_RETRY_BASE_SECONDS", 60.0, minimum=0.01)
WEBHOOK_RETRY_MAX_SECONDS = cfg.float("WEBHOOK_RETRY_MAX_SECONDS", 6 * 3600.0, minimum=0.01)
# The sweep fans out what the relay's signal did not (a lost task) and queues again the PENDING
# deliveries due over WEBHOOK_REQUEUE_AFTER_SECONDS ago that nobody holds (a worker died with one).
WEBHOOK_SWEEP_INTERVAL_SECONDS = cfg.float("WEBHOOK_SWEEP_INTERVAL_SECONDS", 5.0, minimum=0.5)
WEBHOOK_REQUEUE_AFTER_SECONDS = cfg.float("WEBHOOK_REQUEUE_AFTER_SECONDS", 60.0, minimum=0.0)
CELERY_BEAT_SCHEDULE["sweep-webhooks"] = {
    "task": "webhooks.sweep",
    "schedule": WEBHOOK_SWEEP_INTERVAL_SECONDS,
    "options": {"expires": max(10.0, WEBHOOK_SWEEP_INTERVAL_SECONDS)},
}
# --- end Webhooks (issue 16)

# --- Live notifications: outbox relay and WebSocket stream (issue 16) -------------------------
# Owned by notifications. See notifications/relay.py and notifications/consumers.py.
ASGI_APPLICATION = "bookme.asgi.application"
# Channel layer of the stream: Redis pub/sub (channels-redis's RedisPubSubChannelLayer). The relay
# PUBLISHes each notification once per group; each ASGI process holds one subscription and gets
# messages pushed. The list layer (RedisChannelLayer) pops one message per four round trips per
# process and fell seconds behind at 1,000 sockets and 200 frames/s (docs/results.md). Pub/sub
# delivers at most once: what is published while a process's subscription is down is lost, and
# its sockets get it from the outbox at their next heartbeat, as anything else the layer loses.
# Pub/sub channels are global to the Redis server, not per database: the default prefix names the
# database so two deployments (or test runs) on one server never hear each other.
_STREAM_REDIS_DB = re.fullmatch(r"[^?]*?/(\d+)(\?.*)?", REDIS_URL)
_STREAM_LAYER_PREFIX = f"bookme-asgi-db{_STREAM_REDIS_DB[1] if _STREAM_REDIS_DB else 0}"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            # No client read timeout (redis-py 8 defaults to 5 s; django/channels_redis#422): the
            # subscription stays idle for as long as nothing changes.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "prefix": cfg.str("CHANNEL_LAYER_PREFIX", _STREAM_LAYER_PREFIX),
        },
    }
}
# A socket without a bearer header or a staff session must send its auth frame within this (else 4408).
STREAM_AUTH_TIMEOUT_SECONDS = cfg.float("STREAM_AUTH_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# Heartbeat period: each one re-checks the token (revoked/expired: close 4401) and reads the outbox
# for anything the live path lost.
STREAM_HEARTBEAT_SECONDS = cfg.float("STREAM_HEARTBEAT_SECONDS", 15.0, minimum=0.1)
# The relay wakes on pg_notify and, failing that, polls this often; numbers at most this many per transaction.
RELAY_POLL_SECONDS = cfg.float("RELAY_POLL_SECONDS", 1.0, minimum=0.05)
RELAY_BATCH_SIZE = cfg.int("RELAY_BATCH_SIZE", 500, minimum=1)
# The relay's own /metrics on 127.0.0.1 (published count, lag). 0 = off.
RELAY_METRICS_PORT = cfg.int("RELAY_METRICS_PORT", 0, minimum=0)
# --- end Live notifications (issue 16)
