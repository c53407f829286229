"""The event body a receiver gets and its signature header (Stripe's scheme).

`BookMe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`: the
receiver recomputes the HMAC over the raw bytes it received, compares in constant time, and
refuses timestamps too far from its clock (replays). docs/api.md, "Webhooks", is its guide.
"""
from __future__ import annotations

import hashlib
import hmac
import json

SIGNATURE_HEADER = "BookMe-Signature"
EVENT_ID_HEADER = "BookMe-Event-Id"


def event_body(delivery) -> bytes:
    """The JSON body of `delivery` (a WebhookDelivery with its notification): the same bytes on
    every attempt, so a receiver may hash it."""
    n = delivery.notification
    event = {
        "id": delivery.event_id,
        "type": n.kind,
        "created": int(n.created_at.timestamp()),
        "data": {
            "seq": n.seq,
            "booking": str(n.booking_uuid),
            "from_status": n.from_status or None,
            "to_status": n.to_status,
            "source": n.source,
            "tx_hash": n.tx_hash or None,
            "customer_address": n.customer_address,
            "provider_address": n.provider_address,
            "inviter_address": n.inviter_address or None,
            "occurred_at": n.created_at.isoformat(),
        },
    }
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
