"""The shell's own pages: health (public states, staff details), liveness, the OpenAPI schema and
its docs (throttled per address), /metrics (scrapers only), and the answer to a console sign-in
locked out by django-axes."""
from __future__ import annotations

import hmac
import ipaddress
import logging

from django.conf import settings
from django.http import JsonResponse
from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from redis.exceptions import RedisError
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import api_view, authentication_classes, permission_classes, throttle_classes
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from escrow.authentication import is_staff_user
from escrow.schema import refusals
from escrow.throttling import PublicThrottle, client_address

from .health import UNHEALTHY, collect_health, public_health

log = logging.getLogger(__name__)


class HealthThrottle(PublicThrottle):
    """GET /api/health/ per client address: settings.HEALTH_THROTTLE_RATE, a budget of its own
    (load balancers probe it often). With Redis down the request is let through: health has to
    be able to say that Redis is down."""

    scope = "health"

    def get_rate(self):
        return settings.HEALTH_THROTTLE_RATE

    def allow_request(self, request, view):
        try:
            return super().allow_request(request, view)
        except RedisError as exc:
            log.warning("health throttle skipped, Redis unavailable: %s", exc)
            return True


@extend_schema(
    responses={200: dict, 503: dict, **refusals(429)},
    description="Health of the database, Redis, the chain RPC (head block age), the escrow contract "
    "(paused?), the chain identity (chain id, signer, operator) and the chain sync (lag, last scan). "
    "healthy/degraded → 200, unhealthy → 503; a part is \"unknown\" when the worker has not checked it "
    "lately. Public callers get the status of each part; staff signed in to the console get the details. "
    "Throttled per client address (HEALTH_THROTTLE_RATE).",
)
@api_view(["GET"])
@authentication_classes([SessionAuthentication])  # staff's console session: the details
@permission_classes([AllowAny])  # anyone: the state of each part (the schema says the session is optional)
@throttle_classes([HealthThrottle])
def health(request):
    report = collect_health()
    body = report if is_staff_user(request.user) else public_health(report)
    return Response(body, status=503 if report["status"] == UNHEALTHY else 200)


@extend_schema(
    responses={200: dict}, description="Liveness: the web process answers. Touches no database, cache or chain."
)
@api_view(["GET"])
@authentication_classes([])
@permission_classes([])
# Not throttled: a throttle would cost a Redis round trip, and tie liveness to Redis.
@throttle_classes([])
def health_live(request):
    return Response({"status": "alive"})


class _RefusedInJson:
    """Refusals (a 429 above all) answered in JSON like the API's, whatever the page renders."""

    def handle_exception(self, exc):
        self.request.accepted_renderer, self.request.accepted_media_type = JSONRenderer(), "application/json"
        return super().handle_exception(exc)


class SchemaView(_RefusedInJson, SpectacularAPIView):
    """The OpenAPI schema: public, generated per request, so throttled per client address."""

    throttle_classes = [PublicThrottle]


class DocsView(_RefusedInJson, SpectacularSwaggerView):
    """Swagger UI over the schema (two requests per visit: the page and the schema)."""

    throttle_classes = [PublicThrottle]


def metrics(request):
    """The web process's prometheus registry, for scrapers only: METRICS_BEARER_TOKEN or an address
    in METRICS_ALLOWED_ADDRESSES (bookme/settings.py)."""
    if _has_metrics_token(request) or _from_metrics_address(request):
        return ExportToDjangoView(request)
    return JsonResponse(
        {"detail": "Metrics are for the monitoring system: send the metrics bearer token, or scrape from an "
                   "address in METRICS_ALLOWED_ADDRESSES."},
        status=403,
    )


def _has_metrics_token(request) -> bool:
    token = settings.METRICS_BEARER_TOKEN
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if token is None or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.reveal().encode())


def _from_metrics_address(request) -> bool:
    if "HTTP_X_FORWARDED_FOR" in request.META and settings.API_TRUSTED_PROXIES == 0:
        # Forwarded by a proxy we were not told about: the address we see is the proxy's, not the client's.
        return False
    try:
        address = ipaddress.ip_address(client_address(request))
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOWED_ADDRESSES)


def console_sign_in_locked_out(request, original_response=None, credentials=None) -> JsonResponse:
    """django-axes' answer (AXES_LOCKOUT_CALLABLE) to a console sign-in from a locked-out address."""
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    return JsonResponse(
        {"detail": f"Too many failed sign-ins from this address: the console's sign-in is locked for it until "
                   f"{seconds // 60} minutes after the last failure. Staff can lift the lock (docs/runbook.md)."},
        status=429,
        headers={"Retry-After": str(seconds)},
    )
