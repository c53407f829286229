"""Staff and operator actions on the event store (the admin, commands and tasks call these).

    request_retry(event_ids, actor) -> int        FAILED/DEAD_LETTER/RETRY → RETRY, due now
    resolve_event(event, actor, reason) -> ChainEvent
        Close a dead letter by hand (staff fixed the booking another way). It stays
        DEAD_LETTER (it was never applied) with resolved_by/resolution_note/resolved_at set;
        "open" dead letters are status DEAD_LETTER and resolved_at IS NULL.
    replay_range(from_block, to_block=None, actor=...) -> ReplayReport   (see chain_events.replay)
    open_dead_letters() -> QuerySet
"""
from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from . import replay
from .models import ChainEvent, EventStatus
from .reports import ReplayReport

log = logging.getLogger(__name__)

RETRYABLE = (EventStatus.FAILED, EventStatus.DEAD_LETTER, EventStatus.RETRY)


class EventNotResolvable(ValueError):
    """resolve_event refused: the event is not failed, or no reason was given."""


def request_retry(event_ids, actor: str) -> int:
    """Queue these events for the next `retry_failed_events` run (due at once).

    Attempts keep counting: a dead letter that fails again goes straight back to DEAD_LETTER.
    A manual resolution is cleared (the event is live again). Returns how many were queued.
    """
    now = timezone.now()
    with transaction.atomic():
        queued = (
            ChainEvent.objects.filter(id__in=list(event_ids), status__in=RETRYABLE)
            .update(
                status=EventStatus.RETRY, next_retry_at=now, resolved_by="", resolution_note="", resolved_at=None,
                updated_at=now,
            )
        )
    log.info("%s queued %d chain event(s) for retry", actor or "someone", queued)
    return queued


def resolve_event(event: ChainEvent, actor: str, reason: str) -> ChainEvent:
    """Staff close a FAILED or DEAD_LETTER event without applying it; `reason` is required."""
    reason = (reason or "").strip()
    if not reason:
        raise EventNotResolvable("a reason is required to resolve an event")
    now = timezone.now()
    with transaction.atomic():
        event = ChainEvent.objects.select_for_update().get(pk=event.pk)
        if event.status not in (EventStatus.FAILED, EventStatus.DEAD_LETTER, EventStatus.RETRY):
            raise EventNotResolvable(f"event is {event.status}, only failed events can be resolved")
        event.status = EventStatus.DEAD_LETTER  # never applied; no more automatic retries
        event.next_retry_at = None
        event.resolved_by = (actor or "")[:200]
        event.resolution_note = reason
        event.resolved_at = now
        event.updated_at = now
        event.save(update_fields=[
            "status", "next_retry_at", "resolved_by", "resolution_note", "resolved_at", "updated_at",
        ])
    log.info("%s resolved chain event %s: %s", actor or "someone", event.pk, reason)
    return event


def open_dead_letters() -> QuerySet:
    return ChainEvent.objects.filter(status=EventStatus.DEAD_LETTER, resolved_at__isnull=True)


def replay_range(from_block: int, to_block: int | None = None, *, actor: str = "replay") -> ReplayReport:
    return replay.replay_range(from_block, to_block, actor=actor)
