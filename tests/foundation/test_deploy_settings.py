"""Production settings: `manage.py check --deploy` finds nothing to warn about under a production-like
environment (DEBUG off, HTTPS behind a TLS-terminating proxy), and the HTTPS settings follow the
environment with safe defaults."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def production_environment(**overrides) -> dict:
    """What an operator sets in production (docs/configuration.md), on top of the test chain's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k != "DJANGO_HTTPS"}
    env.update(
        BOOKME_READ_ENV_FILES="0",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="api.bookme.example",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://api.bookme.example",
        API_TRUSTED_PROXIES="1",
        DJANGO_SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        BOOKME_PROCESS_ROLE="web",
    )
    env.pop("OPERATOR_PRIVATE_KEY", None)  # the web process never holds it
    env.update(overrides)
    return env


def manage(*args, **overrides) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=production_environment(**overrides),
        capture_output=True, text=True, timeout=120,
    )


def test_check_deploy_is_clean_in_production():
    result = manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


_SHOW = (
    "from django.conf import settings as s; import json; print(json.dumps([s.DEBUG, s.SECURE_SSL_REDIRECT, "
    "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, "
    "s.SECURE_HSTS_PRELOAD, s.SECURE_PROXY_SSL_HEADER]))"
)


def test_debug_off_means_https_by_default():
    result = manage("shell", "--no-imports", "-c", _SHOW, DJANGO_SECURE_PROXY_SSL_HEADER="")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [False, True, True, True, 365 * 24 * 3600, True, True, None]


def test_debug_on_serves_plain_http_unless_told_otherwise():
    result = manage("shell", "--no-imports", "-c", _SHOW, DJANGO_DEBUG="true", DJANGO_SECURE_PROXY_SSL_HEADER="")
    assert json.loads(result.stdout) == [True, False, False, False, 0, True, True, None]


def test_the_proxy_header_is_named_like_an_http_header():
    result = manage("shell", "--no-imports", "-c", _SHOW)
    assert json.loads(result.stdout)[-1] == ["HTTP_X_FORWARDED_PROTO", "https"]
    refused = manage("check", DJANGO_SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https")
    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        "bookme: configuration error: DJANGO_SECURE_PROXY_SSL_HEADER must be a header name such as X-Forwarded-Proto"
    )


def test_a_bad_metrics_setting_stops_start_up_with_one_line():
    short = manage("check", METRICS_BEARER_TOKEN="too-short")
    assert short.returncode != 0
    assert short.stderr.strip() == "bookme: configuration error: METRICS_BEARER_TOKEN must be at least 32 characters"
    bad = manage("check", METRICS_ALLOWED_ADDRESSES="10.0.0.0/8,prometheus.internal")
    assert bad.returncode != 0
    assert bad.stderr.strip() == (
        "bookme: configuration error: METRICS_ALLOWED_ADDRESSES must be a comma-separated list of IP addresses or "
        "networks"
    )
