"""What anyone on the internet can reach besides the API itself: /metrics (scrapers only), the
OpenAPI schema and docs (throttled per address, no password authentication), the console's
sign-in (locked per address after repeated failures, each failure recorded)."""
from __future__ import annotations

import base64
import ipaddress
import logging

import pytest
from django.test import Client
from django.urls import URLResolver, get_resolver
from rest_framework.permissions import AllowAny

from common.config import Secret
from escrow.throttling import RedisSlidingWindowThrottle

pytestmark = pytest.mark.django_db

METRICS_TOKEN = "m" * 40


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# -- /metrics ------------------------------------------------------------------------------------
def test_metrics_are_refused_to_an_address_outside_the_allow_list():
    response = Client(REMOTE_ADDR="203.0.113.5").get("/metrics")
    assert response.status_code == 403
    assert "METRICS_ALLOWED_ADDRESSES" in response.json()["detail"]
    assert b"django_http_requests" not in response.content


def test_metrics_are_served_to_an_allowed_network(settings):
    settings.METRICS_ALLOWED_ADDRESSES = [ipaddress.ip_network("10.1.0.0/16")]
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403


def test_metrics_are_served_for_the_bearer_token_from_anywhere(settings):
    settings.METRICS_BEARER_TOKEN = Secret(METRICS_TOKEN)
    outside = Client(REMOTE_ADDR="203.0.113.5")
    assert outside.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}").status_code == 200
    assert outside.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN[:-1]}x").status_code == 403
    assert outside.get("/metrics", HTTP_AUTHORIZATION=f"Basic {METRICS_TOKEN}").status_code == 403


def test_behind_an_undeclared_proxy_the_proxys_loopback_address_does_not_open_metrics():
    """A proxy on the same host forwards every client from 127.0.0.1: with API_TRUSTED_PROXIES unset
    the address is not the client's, so the allow-list does not apply."""
    response = Client(REMOTE_ADDR="127.0.0.1").get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.5")
    assert response.status_code == 403


def test_behind_a_declared_proxy_the_forwarded_client_address_is_judged(settings):
    settings.API_TRUSTED_PROXIES = 1
    proxy = Client(REMOTE_ADDR="127.0.0.1")
    assert proxy.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 403
    settings.METRICS_ALLOWED_ADDRESSES = [ipaddress.ip_network("203.0.113.0/24")]
    assert proxy.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 200


# -- schema and docs -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_schema_and_docs_are_throttled_per_client_address(settings, path):
    settings.PUBLIC_THROTTLE_RATE = "2/minute"
    client = Client(REMOTE_ADDR="198.51.100.4")
    assert [client.get(path).status_code for _ in range(3)] == [200, 200, 429]
    refused = client.get(path)
    assert "throttled" in refused.json()["detail"].lower() and int(refused["Retry-After"]) > 0
    assert Client(REMOTE_ADDR="198.51.100.5").get(path).status_code == 200


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/"])
def test_schema_and_docs_take_no_password(django_user_model, path):
    """DRF's Basic authentication is not among the API's: a staff password guessed at the schema
    is never checked (no 401 telling right from wrong), the page is served as to anyone."""
    django_user_model.objects.create_user("olivia", password="operator-pass-123", is_staff=True)
    for password in ("wrong-guess", "operator-pass-123"):
        credentials = base64.b64encode(f"olivia:{password}".encode()).decode()
        response = Client().get(path, HTTP_AUTHORIZATION=f"Basic {credentials}")
        assert response.status_code == 200, response.content[:300]
        assert "Basic" not in response.get("WWW-Authenticate", "")


def _api_views(patterns=None, prefix=""):
    """(route, DRF view class) of every API view in the URL conf."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            yield from _api_views(pattern.url_patterns, prefix + str(pattern.pattern))
        elif getattr(pattern.callback, "cls", None) is not None:
            route = prefix + str(pattern.pattern)  # path() text, or a regex with an optional slash
            yield route.replace("/?$", "/").replace("$", "").replace("^", ""), pattern.callback.cls


def test_every_api_view_anyone_may_call_is_throttled_per_client_address():
    public = {route: view for route, view in _api_views()
              if all(permission is AllowAny for permission in view.permission_classes)}
    assert {"api/schema/", "api/docs/", "api/health/", "api/auth/nonce/", "api/auth/verify/"} <= set(public)
    unthrottled = {route for route, view in public.items() if not view.throttle_classes}
    # Liveness touches nothing, not even the throttle's Redis (a throttle would cost more than the answer).
    assert unthrottled == {"api/health/live/"}
    for route, view in public.items():
        for throttle in view.throttle_classes:
            assert throttle.get_ident is RedisSlidingWindowThrottle.get_ident, (route, throttle)  # per address


def test_every_api_view_authenticates_with_the_projects_classes_only(settings):
    from rest_framework.settings import api_settings

    assert [cls.__name__ for cls in api_settings.DEFAULT_AUTHENTICATION_CLASSES] == [
        "WalletTokenAuthentication", "SessionAuthentication",
    ]


# -- console sign-in -----------------------------------------------------------------------------
def _sign_in(client, password):
    return client.post("/admin/login/?next=/admin/", {"username": "olivia", "password": password})


def test_console_sign_in_locks_an_address_after_repeated_failures_and_records_each(
    django_user_model, settings, caplog
):
    from axes.models import AccessAttempt, AccessFailureLog

    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_user("olivia", password="operator-pass-123", is_staff=True)
    attacker = Client(REMOTE_ADDR="198.51.100.7")
    with caplog.at_level(logging.WARNING):
        answers = [_sign_in(attacker, f"guess-{i}").status_code for i in range(3)]
    assert answers == [200, 200, 429]  # the login form again twice; the third failure locks
    # Locked: even the right password is refused now, with a JSON answer that says why.
    refused = _sign_in(attacker, "operator-pass-123")
    assert refused.status_code == 429
    assert "Too many failed sign-ins from this address" in refused.json()["detail"]
    assert int(refused["Retry-After"]) == 15 * 60
    assert "_auth_user_id" not in attacker.session
    # Each failure is recorded (the console lists them) and logged, the password never.
    attempt = AccessAttempt.objects.get()
    assert (attempt.username, attempt.ip_address) == ("olivia", "198.51.100.7")
    assert AccessFailureLog.objects.filter(username="olivia", ip_address="198.51.100.7").count() >= 3
    assert "login failure" in caplog.text and "198.51.100.7" in caplog.text
    assert "guess-" not in caplog.text and "guess-" not in attempt.post_data
    # Another address still signs in.
    colleague = Client(REMOTE_ADDR="198.51.100.8")
    assert _sign_in(colleague, "operator-pass-123").status_code == 302


def test_an_ipv6_attacker_cannot_escape_the_lockout_within_its_64(django_user_model, settings):
    settings.AXES_FAILURE_LIMIT = 2
    django_user_model.objects.create_user("olivia", password="operator-pass-123", is_staff=True)
    assert _sign_in(Client(REMOTE_ADDR="2001:db8:1:2::1"), "guess").status_code == 200
    assert _sign_in(Client(REMOTE_ADDR="2001:db8:1:2::ffff"), "guess").status_code == 429
    assert _sign_in(Client(REMOTE_ADDR="2001:db8:1:2:aaaa::9"), "operator-pass-123").status_code == 429
    assert _sign_in(Client(REMOTE_ADDR="2001:db8:1:3::1"), "operator-pass-123").status_code == 302


def test_a_successful_sign_in_resets_the_count(django_user_model, settings):
    settings.AXES_FAILURE_LIMIT = 2
    django_user_model.objects.create_user("olivia", password="operator-pass-123", is_staff=True)
    client = Client(REMOTE_ADDR="198.51.100.9")
    assert _sign_in(client, "typo").status_code == 200
    assert _sign_in(client, "operator-pass-123").status_code == 302
    client.logout()
    assert _sign_in(client, "typo").status_code == 200  # one failure again, not two
    assert _sign_in(client, "operator-pass-123").status_code == 302
