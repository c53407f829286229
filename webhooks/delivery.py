"""Sending one webhook delivery: claim it, POST it, record the attempt, decide what comes next.

- In order per booking per endpoint: only the oldest PENDING delivery of an (endpoint, booking)
  pair is sent; the next one waits until it is DELIVERED or DEAD (`heads` finds the ones to send).
- One sender at a time: `attempt` claims the row with SELECT ... FOR UPDATE SKIP LOCKED and
  sets a lease (WEBHOOK_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS), then sends outside any
  transaction; another worker given the same delivery meanwhile finds it leased and leaves it.
  Only the lease's holder changes the delivery's state afterwards.
- The URL is checked again before every attempt (webhooks.url_safety) and the request goes to
  the checked address (urllib3 pool on the IP, Host header and TLS server name of the URL's
  host): a refused URL is an attempt of its own and the delivery is DEAD at once.
- Failures (non-2xx, redirects included, timeouts, connection errors) are retried after
  `backoff_seconds`; DEAD once the attempts reach the delivery's attempt_limit.
"""
from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import certifi
import urllib3
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import metrics
from .models import DeliveryStatus, WebhookAttempt, WebhookDelivery
from .signing import EVENT_ID_HEADER, SIGNATURE_HEADER, event_body, signature_header
from .url_safety import Target, UnsafeWebhookUrl, resolve_target

LEASE_MARGIN_SECONDS = 30.0
RESPONSE_EXCERPT_BYTES = 200
USER_AGENT = "BookMe-Webhooks/1"


@dataclass(frozen=True)
class AttemptOutcome:
    """What `attempt` did: `result` is "delivered", "failed" (retry in `retry_in` seconds),
    "dead", or "skipped" (not due, already finished, held by another worker, waiting behind an
    older delivery of its pair, or its endpoint is inactive)."""

    result: str
    pair: tuple[int, int] | None = None
    retry_in: float | None = None

    @property
    def finished(self) -> bool:
        return self.result in ("delivered", "dead")


def backoff_seconds(failed_attempts: int) -> float:
    """min(ceiling, base * 2^(n-1)), of which a random half: workers retrying after one outage
    do not come back at the same instant. Hand-rolled: Celery's get_exponential_backoff_interval
    works in whole seconds, and the tests retry within fractions of one."""
    delay = min(settings.WEBHOOK_RETRY_MAX_SECONDS, settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (failed_attempts - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def attempt(delivery_id: int) -> AttemptOutcome:
    claimed = _claim(delivery_id)
    if claimed is None:
        return AttemptOutcome("skipped")
    delivery, token = claimed
    attempted_at = timezone.now()
    started = time.monotonic()
    status_code, error, refused = _send(delivery)
    duration_ms = int((time.monotonic() - started) * 1000)
    return _record(delivery.pk, token, attempted_at=attempted_at, status_code=status_code, error=error,
                   refused=refused, duration_ms=duration_ms)


def _claim(delivery_id: int) -> tuple[WebhookDelivery, uuid.UUID] | None:
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("endpoint", "notification")
            .filter(pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now, endpoint__active=True)
            .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
            .first()
        )
        if delivery is None:
            return None
        older_waiting = WebhookDelivery.objects.filter(
            endpoint_id=delivery.endpoint_id, booking_id=delivery.booking_id, status=DeliveryStatus.PENDING,
            seq__lt=delivery.seq,
        ).exists()
        if older_waiting:
            return None
        token = uuid.uuid4()
        delivery.lease_token = token
        delivery.lease_expires_at = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS)
        delivery.save(update_fields=["lease_token", "lease_expires_at"])
    return delivery, token


def _send(delivery: WebhookDelivery) -> tuple[int | None, str, bool]:
    """POST the delivery once: (status code or None, error text, refused by the URL check)."""
    try:
        target = resolve_target(delivery.endpoint.url)
    except UnsafeWebhookUrl as exc:
        return None, f"refused: {exc}", True
    body = event_body(delivery)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID_HEADER: delivery.event_id,
        SIGNATURE_HEADER: signature_header(delivery.endpoint.secret, int(time.time()), body),
    }
    timeout = settings.WEBHOOK_TIMEOUT_SECONDS
    try:
        response = _post(target, body, headers, timeout)
    except (urllib3.exceptions.TimeoutError, TimeoutError):
        return None, f"timed out after {timeout:g} s", False
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return None, f"connection failed: {exc}"[:500], False
    status, excerpt = response
    if 200 <= status < 300:
        return status, "", False
    why = "redirect not followed" if 300 <= status < 400 else "not a 2xx answer"
    return status, (f"HTTP {status} ({why})" + (f": {excerpt}" if excerpt.strip() else ""))[:500], False


def _post(target: Target, body: bytes, headers: dict, timeout: float) -> tuple[int, str]:
    address = target.addresses[0]
    default_port = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    headers = {**headers, "Host": host if target.port == default_port else f"{host}:{target.port}"}
    pool_timeout = urllib3.Timeout(connect=timeout, read=timeout)
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address, target.port, timeout=pool_timeout, retries=False, maxsize=1, cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(), server_hostname=target.host, assert_hostname=target.host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, target.port, timeout=pool_timeout, retries=False, maxsize=1)
    with pool:
        response = pool.urlopen("POST", target.path, body=body, headers=headers, redirect=False, retries=False,
                                preload_content=False)
        try:
            excerpt = response.read(RESPONSE_EXCERPT_BYTES).decode("utf-8", "replace")
        finally:
            response.release_conn()
    return response.status, excerpt


def _record(delivery_id: int, token: uuid.UUID, *, attempted_at, status_code: int | None, error: str,
            refused: bool, duration_ms: int) -> AttemptOutcome:
    delivered = status_code is not None and 200 <= status_code < 300
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
        WebhookAttempt.objects.create(delivery=delivery, attempted_at=attempted_at, status_code=status_code,
                                      error=error, duration_ms=duration_ms)
        metrics.record_attempt(status_code=status_code, error=error, refused=refused, duration_ms=duration_ms)
        pair = (delivery.endpoint_id, delivery.booking_id)
        if delivery.lease_token != token or delivery.status != DeliveryStatus.PENDING:
            # The lease ran out and another worker has the delivery now (or an operator acted):
            # the attempt is kept, the state is theirs.
            return AttemptOutcome("skipped", pair)
        delivery.attempts += 1
        delivery.last_status_code = status_code
        delivery.last_error = error
        delivery.lease_token = None
        delivery.lease_expires_at = None
        retry_in = None
        if delivered:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = timezone.now()
            result = "delivered"
        elif refused or delivery.attempts >= delivery.attempt_limit:
            delivery.status = DeliveryStatus.DEAD
            result = "dead"
        else:
            retry_in = backoff_seconds(delivery.attempts - (delivery.attempt_limit - settings.WEBHOOK_MAX_ATTEMPTS))
            delivery.next_attempt_at = timezone.now() + timedelta(seconds=retry_in)
            result = "failed"
        delivery.save()
    if delivery.status != DeliveryStatus.PENDING:
        metrics.record_finished(delivery.status)
    return AttemptOutcome(result, pair, retry_in)


def heads(pairs=None, *, due_before=None, limit: int | None = None) -> list[int]:
    """Ids of the deliveries to send next: the oldest PENDING delivery of each (endpoint, booking)
    pair of an active endpoint, of the given pairs (None: all), due before `due_before` (None: any
    time) and not held by a live lease."""
    pending = WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING, endpoint__active=True)
    if pairs is not None:
        pairs = set(pairs)
        if not pairs:
            return []
        pending = pending.filter(endpoint_id__in={e for e, _ in pairs}, booking_id__in={b for _, b in pairs})
    oldest = (
        pending.order_by("endpoint_id", "booking_id", "seq")
        .distinct("endpoint_id", "booking_id")
        .values_list("id", "next_attempt_at", "lease_expires_at")
    )
    now = timezone.now()
    chosen = [
        pk for pk, next_attempt_at, lease_expires_at in oldest
        if (due_before is None or next_attempt_at <= due_before)
        and (lease_expires_at is None or lease_expires_at < now)
    ]
    return chosen[:limit] if limit is not None else chosen


def redeliver(delivery: WebhookDelivery, *, actor: str, reason: str) -> tuple[int, int]:
    """An operator sends a DEAD delivery again: PENDING, due now, another WEBHOOK_MAX_ATTEMPTS
    attempts on top of those made (which stay counted and stored). Returns its pair to queue."""
    with transaction.atomic():
        delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        if delivery.status != DeliveryStatus.DEAD:
            raise ValueError(f"only DEAD deliveries are sent again (this one is {delivery.status})")
        delivery.status = DeliveryStatus.PENDING
        delivery.attempt_limit = delivery.attempts + settings.WEBHOOK_MAX_ATTEMPTS
        delivery.next_attempt_at = timezone.now()
        delivery.lease_token = None
        delivery.lease_expires_at = None
        delivery.redelivered_at = timezone.now()
        delivery.redelivered_by = actor[:200]
        delivery.redelivery_reason = reason
        delivery.save()
    return delivery.endpoint_id, delivery.booking_id
