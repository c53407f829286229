"""Operators' changes to webhook endpoints besides the console's form (webhooks/admin.py)."""
from __future__ import annotations

from django.db import transaction

from .models import WebhookEndpoint


def deactivate(endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Stop sending to `endpoint`: no delivery is created for it from now on, and its PENDING ones
    are not attempted (they go out again, in order, if it is made active again)."""
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        endpoint.active = False
        endpoint.save(update_fields=["active"])
    return endpoint
