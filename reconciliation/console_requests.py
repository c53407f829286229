"""Console actions that send a transaction, carried out by the worker.

The web process never holds the operator key (BOOKME_PROCESS_ROLE, docs/configuration.md): a
console action that sends (emergency cancel, orphan refund, pause, completion for the provider,
dispute resolution) checks at once what it can (the check_* functions of
reconciliation.operations and reconciliation.disputes, so an obvious refusal shows on the spot),
then queues a task of reconciliation.tasks and says so. The worker sends through those modules,
which check again under their lock, and writes the outcome into the object's history under the
staff user who asked, beside the SentTransaction or EmergencyPause row the send records itself.
A request delivered twice sends once: the second finds the first transaction and is refused.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model

from chain_events.models import Orphan
from chain_events.rpc import RpcError
from escrow.models import Booking
from escrow.money import CancellationSplit

from . import disputes, operations
from .models import Dispute, EmergencyPause, SentTransaction
from .transactions import TransactionError

log = logging.getLogger(__name__)

# What keeps a send from happening: a refusal (state, reason), the transaction's failure, the node.
_NOT_DONE = (operations.ActionRefused, TransactionError, RpcError)

#: What the console says when it has queued a send.
QUEUED = "queued: the worker sends it, and the outcome appears in the history here"


def _write_history(obj, actor: str, message: str) -> None:
    """`message` in `obj`'s admin history, under the staff user the actor label names ("staff:<username>",
    common.audit.staff_actor); an actor that is no staff user (a command's) has the log only."""
    if not actor.startswith("staff:"):
        return
    user_model = get_user_model()
    user_id = user_model.objects.filter(**{user_model.USERNAME_FIELD: actor.removeprefix("staff:")}).values_list(
        "pk", flat=True
    ).first()
    if user_id is not None:
        LogEntry.objects.log_actions(
            user_id, type(obj).objects.filter(pk=obj.pk), CHANGE, change_message=message, single_object=True
        )


def emergency_cancel(booking_id: int, *, actor: str, reason: str) -> dict:
    booking = Booking.objects.get(pk=booking_id)
    return _send(booking, actor, "Emergency cancel",
                 lambda: operations.emergency_cancel_booking(booking, actor=actor, reason=reason))


def refund_orphan(orphan_id: int, *, actor: str, reason: str) -> dict:
    orphan = Orphan.objects.get(pk=orphan_id)
    return _send(orphan, actor, "Refund orphan", lambda: operations.refund_orphan(orphan, actor=actor, reason=reason))


def complete_for_provider(booking_id: int, *, actor: str, reason: str) -> dict:
    booking = Booking.objects.get(pk=booking_id)
    return _send(booking, actor, "Complete for the provider",
                 lambda: operations.complete_booking_by_operator(booking, actor=actor, reason=reason))


def resolve_dispute(dispute_id: int, *, actor: str, reason: str, parts: list[str]) -> dict:
    """`parts`: customer, provider, platform and inviter base units, as decimal strings."""
    dispute = Dispute.objects.get(pk=dispute_id)
    split = CancellationSplit(*(int(part) for part in parts))
    return _send(dispute, actor, "Resolve dispute",
                 lambda: disputes.resolve_dispute(dispute, split=split, actor=actor, reason=reason))


def pause(*, actor: str, reason: str) -> dict:
    """pause(): the EmergencyPause row records the attempt either way, and gets the outcome in its history."""
    try:
        entry = operations.pause_contract(actor=actor, reason=reason)
    except _NOT_DONE as exc:
        entry = EmergencyPause.objects.filter(actor=actor[:200]).first()
        if entry is not None:
            _write_history(entry, actor, f"Pause contract failed: {exc} (reason given: {reason})")
        log.error("pause asked by %s not done: %s", actor, exc)
        return {"done": False, "error": str(exc)[:300]}
    _write_history(entry, actor, f"Pause contract: {reason} → tx {entry.transaction.tx_hash}")
    return {"done": True, "tx_hash": entry.transaction.tx_hash}


def _send(obj, actor: str, title: str, send: Callable[[], SentTransaction]) -> dict:
    """Run `send()` for a console request about `obj` and record what came of it: refusals and
    failures are recorded, never raised (a task has nobody to raise them to)."""
    try:
        record = send()
    except _NOT_DONE as exc:
        _write_history(obj, actor, f"{title} not done by the worker: {exc}")
        log.warning("%s of %s not done: %s", title, obj, exc)
        return {"done": False, "error": str(exc)[:300]}
    _write_history(obj, actor, f"{title} sent by the worker: tx {record.tx_hash} ({record.status})")
    return {"done": True, "tx_hash": record.tx_hash, "status": record.status}
