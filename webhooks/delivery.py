"""Sending webhook deliveries: claim one, POST it, record the attempt, go on with the next in line.

- In order per booking per endpoint: only the oldest PENDING delivery of an (endpoint, booking)
  pair is sent; the next one waits until it is DELIVERED or DEAD (`heads` finds the ones to send).
- One sender at a time: a claim is one conditional UPDATE that sets a lease
  (WEBHOOK_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS) only on a row that is PENDING, due, of an
  active endpoint, with no older PENDING delivery of its pair and no live lease; the row lock of
  the UPDATE and PostgreSQL's re-check of those conditions on a row another claimer just changed
  let one of two claimers win. The POST happens outside any transaction; only the lease's holder
  changes the delivery's state afterwards (the record's UPDATE is conditional on its token).
- `attempt_in_line` sends a delivery and then, in the same call, the next one of its pair as
  long as each finishes and the next is due: a busy booking costs no task hop per event.
- The URL is checked again before every attempt (webhooks.url_safety) and the request goes to
  the checked address (urllib3 pool on the IP, Host header and TLS server name of the URL's
  host): a refused URL is an attempt of its own and the delivery is DEAD at once. The pools are
  kept per process, keyed by (scheme, checked IP, port, TLS name), so a keep-alive connection
  is reused only towards the address checked for this attempt.
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
from django.utils import timezone

from common.db import server_binding_cursor
from notifications.models import Notification

from . import metrics
from .models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from .signing import EVENT_ID_HEADER, SIGNATURE_HEADER, event_body, signature_header
from .url_safety import Target, UnsafeWebhookUrl, resolve_target

LEASE_MARGIN_SECONDS = 30.0
RESPONSE_EXCERPT_BYTES = 200
USER_AGENT = "BookMe-Webhooks/1"
# Keep-alive connections per (scheme, address, port, TLS name) beyond which a finished one is
# closed instead of kept; pools of the least recently used addresses beyond POOLS are closed.
CONNECTIONS_PER_ADDRESS = 8
POOLS = 100

_pools = urllib3.PoolManager(
    num_pools=POOLS, maxsize=CONNECTIONS_PER_ADDRESS, block=False, retries=False,
    cert_reqs="CERT_REQUIRED", ca_certs=certifi.where(),
)


@dataclass(frozen=True)
class AttemptOutcome:
    """What an attempt did: `result` is "delivered", "failed" (retry `delivery_id` in `retry_in`
    seconds), "dead", or "skipped" (not due, already finished, held by another worker, waiting
    behind an older delivery of its pair, or its endpoint is inactive)."""

    result: str
    pair: tuple[int, int] | None = None
    retry_in: float | None = None
    delivery_id: int | None = None

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
    """Claim and send this delivery once, if it is its pair's turn and due."""
    return _attempt(_CLAIM_BY_ID, {"delivery_id": delivery_id})


def attempt_next(pair: tuple[int, int]) -> AttemptOutcome:
    """Claim and send the oldest PENDING delivery of `pair` once, if it is due and free."""
    endpoint_id, booking_id = pair
    return _attempt(_CLAIM_NEXT_OF_PAIR, {"endpoint_id": endpoint_id, "booking_id": booking_id})


def attempt_in_line(delivery_id: int, *, limit: int) -> AttemptOutcome:
    """Attempt `delivery_id`, then, each time one finishes, the next delivery of its pair if it is
    already due, up to `limit` deliveries. Returns the last outcome that was not "skipped" (or
    the first one's): a "failed" one names the delivery to retry, a finished one the pair whose
    next delivery, if any, is not being sent."""
    outcome = attempt(delivery_id)
    for _ in range(limit - 1):
        if not outcome.finished:
            break
        following = attempt_next(outcome.pair)
        if following.result == "skipped":
            break
        outcome = following
    return outcome


def _attempt(claim_sql: str, params: dict) -> AttemptOutcome:
    claimed = _claim(claim_sql, params)
    if claimed is None:
        return AttemptOutcome("skipped")
    delivery, token = claimed
    attempted_at = timezone.now()
    started = time.monotonic()
    status_code, error, refused = _send(delivery)
    duration_ms = int((time.monotonic() - started) * 1000)
    return _record(delivery, token, attempted_at=attempted_at, status_code=status_code, error=error,
                   refused=refused, duration_ms=duration_ms)


# The hot path is two statements per delivery, in plain SQL (common.db: server-side binding,
# prepared once per connection), because the ORM can neither UPDATE ... RETURNING joined rows
# nor insert and update in one statement, and building its queries cost more CPU than the POST.
_CLAIM = """
    UPDATE {delivery} AS d SET lease_token = %(token)s, lease_expires_at = %(expires)s
    FROM {endpoint} AS e, {notification} AS n
    WHERE d.id = ({candidate})
      AND d.status = 'PENDING' AND d.next_attempt_at <= %(now)s
      AND (d.lease_expires_at IS NULL OR d.lease_expires_at < %(now)s)
      AND e.id = d.endpoint_id AND e.active AND n.id = d.notification_id
      AND NOT EXISTS (SELECT 1 FROM {delivery} AS older
                      WHERE older.endpoint_id = d.endpoint_id AND older.booking_id = d.booking_id
                        AND older.status = 'PENDING' AND older.seq < d.seq)
    RETURNING d.id, d.booking_id, d.seq, d.event_id, d.attempts, d.attempt_limit, e.id, e.url, e.secret,
              n.id, n.booking_uuid, n.kind, n.from_status, n.to_status, n.source, n.tx_hash,
              n.customer_address, n.provider_address, n.inviter_address, n.created_at
"""
_TABLES = {"delivery": WebhookDelivery._meta.db_table, "endpoint": WebhookEndpoint._meta.db_table,
           "notification": Notification._meta.db_table}
# Every condition is on the updated row itself, none in a subquery over it: PostgreSQL re-checks
# them on the row's new version when another claimer changed it meanwhile, so one of two wins.
_CLAIM_BY_ID = _CLAIM.format(candidate="%(delivery_id)s", **_TABLES)
_CLAIM_NEXT_OF_PAIR = _CLAIM.format(
    candidate="""SELECT id FROM {delivery} WHERE endpoint_id = %(endpoint_id)s AND booking_id = %(booking_id)s
                 AND status = 'PENDING' ORDER BY seq LIMIT 1""".format(**_TABLES),
    **_TABLES,
)
# One statement: the attempt is stored whatever happens; the delivery changes only while the
# lease is ours (the token), and both or neither are written.
_RECORD = """
    WITH attempt AS (
        INSERT INTO {attempt} (delivery_id, attempted_at, status_code, error, duration_ms)
        VALUES (%(delivery_id)s, %(attempted_at)s, %(status_code)s::integer, %(error)s, %(duration_ms)s)
    )
    UPDATE {delivery} SET status = %(status)s, attempts = %(attempts)s,
        last_status_code = %(status_code)s::integer, last_error = %(error)s, lease_token = NULL,
        lease_expires_at = NULL, delivered_at = COALESCE(%(delivered_at)s::timestamptz, delivered_at),
        next_attempt_at = COALESCE(%(next_attempt_at)s::timestamptz, next_attempt_at)
    WHERE id = %(delivery_id)s AND lease_token = %(token)s AND status = 'PENDING'
    RETURNING id
""".format(attempt=WebhookAttempt._meta.db_table, **_TABLES)


def _claim(sql: str, params: dict) -> tuple[WebhookDelivery, uuid.UUID] | None:
    """Lease the delivery `sql` picks (one UPDATE) and return it with its endpoint and notification."""
    now = timezone.now()
    token = uuid.uuid4()
    expires = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS)
    with server_binding_cursor() as cursor:
        cursor.execute(sql, {**params, "token": token, "now": now, "expires": expires}, prepare=True)
        row = cursor.fetchone()
    if row is None:
        return None
    (pk, booking_id, seq, event_id, attempts, attempt_limit, endpoint_id, url, secret,
     notification_id, booking_uuid, kind, from_status, to_status, source, tx_hash,
     customer_address, provider_address, inviter_address, created_at) = row
    delivery = WebhookDelivery(
        id=pk, booking_id=booking_id, seq=seq, event_id=event_id, attempts=attempts, attempt_limit=attempt_limit,
        status=DeliveryStatus.PENDING, lease_token=token, lease_expires_at=expires,
        endpoint=WebhookEndpoint(id=endpoint_id, url=url, secret=secret, active=True),
        notification=Notification(
            id=notification_id, seq=seq, booking_id=booking_id, booking_uuid=booking_uuid, kind=kind,
            from_status=from_status, to_status=to_status, source=source, tx_hash=tx_hash,
            customer_address=customer_address, provider_address=provider_address, inviter_address=inviter_address,
            created_at=created_at,
        ),
    )
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
    tls_name = {"server_hostname": target.host, "assert_hostname": target.host} if target.scheme == "https" else {}
    pool = _pools.connection_from_host(address, target.port, target.scheme, pool_kwargs=tls_name)
    response = pool.urlopen("POST", target.path, body=body, headers=headers, redirect=False, retries=False,
                            timeout=urllib3.Timeout(connect=timeout, read=timeout), preload_content=False)
    try:
        excerpt = response.read(RESPONSE_EXCERPT_BYTES).decode("utf-8", "replace")
        response.drain_conn()  # the rest is not kept, but read: the connection can serve the next POST
    finally:
        response.release_conn()
    return response.status, excerpt


def _record(delivery: WebhookDelivery, token: uuid.UUID, *, attempted_at, status_code: int | None, error: str,
            refused: bool, duration_ms: int) -> AttemptOutcome:
    """Store the attempt and, if the lease is still ours, the delivery's new state (one statement).
    The decision uses the claimed row's counts: nobody else changes them while our token holds."""
    delivered = status_code is not None and 200 <= status_code < 300
    attempts = delivery.attempts + 1
    retry_in = delivered_at = next_attempt_at = None
    if delivered:
        status, result = DeliveryStatus.DELIVERED, "delivered"
        delivered_at = timezone.now()
    elif refused or attempts >= delivery.attempt_limit:
        status, result = DeliveryStatus.DEAD, "dead"
    else:
        retry_in = backoff_seconds(attempts - (delivery.attempt_limit - settings.WEBHOOK_MAX_ATTEMPTS))
        next_attempt_at = timezone.now() + timedelta(seconds=retry_in)
        status, result = DeliveryStatus.PENDING, "failed"
    with server_binding_cursor() as cursor:
        cursor.execute(_RECORD, {
            "delivery_id": delivery.pk, "token": token, "attempted_at": attempted_at, "status_code": status_code,
            "error": error, "duration_ms": duration_ms, "status": status, "attempts": attempts,
            "delivered_at": delivered_at, "next_attempt_at": next_attempt_at,
        }, prepare=True)
        held = cursor.fetchone() is not None
    metrics.record_attempt(status_code=status_code, error=error, refused=refused, duration_ms=duration_ms)
    pair = (delivery.endpoint_id, delivery.booking_id)
    if not held:
        # The lease ran out and another worker has the delivery now (or an operator acted):
        # the attempt is kept, the state is theirs.
        return AttemptOutcome("skipped", pair, delivery_id=delivery.pk)
    if status != DeliveryStatus.PENDING:
        metrics.record_finished(status)
    return AttemptOutcome(result, pair, retry_in, delivery.pk)


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
