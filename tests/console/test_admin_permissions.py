"""Who may do what in the operators' console, for every action.

Anonymous visitors are sent to the login page; staff outside the operators group read but
cannot act (actions hidden, a posted action refused with 403, nothing changes); operators act,
and every action leaves who/when/why twice: an admin LogEntry carrying the reason and the
domain record the service writes.
"""
from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from chain_events.models import ChainEvent, EventStatus, Orphan, OrphanStatus
from escrow import attention
from escrow.models import AttentionKind, Booking
from reconciliation.models import (
    EmergencyPause,
    FlagKind,
    ReconciliationFlag,
    ReconciliationReport,
    SentTransaction,
    TxPurpose,
    TxStatus,
)

from .conftest import create_dead_letter

pytestmark = pytest.mark.django_db

REASON = "customer reported a double charge (ticket 4711)"


# -- objects to act on, database only (enough for the refusals) ---------------------------------
def _orphan_row() -> Orphan:
    return Orphan.objects.create(
        chain_id=31337, contract_address="0x" + "11" * 20, chain_booking_id="0x" + "ef" * 32,
        event_name="BookingCreatedAndPaid", amount=1_000_000, block_number=9, tx_hash="0x" + "09" * 32,
        chain_status="PAID",
    )


def _flag(booking) -> ReconciliationFlag:
    return ReconciliationFlag.objects.create(
        booking=booking, kind=FlagKind.DATABASE_AHEAD, database_status="PAID", chain_status="NONE", detail="test",
    )


def _flagged_by_the_chain(booking):
    attention.raise_attention(booking, AttentionKind.CHAIN_ANOMALY,
                              "chain: ServiceCompleted in tx 0x01 without a known payment")
    return Booking.objects.get(pk=booking.pk)


ACTIONS = {
    # action name: (model admin url name, needs a confirmation page, factory of the object)
    "reconcile_now": ("escrow_booking", False, lambda booking: booking),
    "acknowledge_attention": ("escrow_booking", True, _flagged_by_the_chain),
    "rebuild_from_chain": ("escrow_booking", True, lambda booking: booking),
    "emergency_cancel": ("escrow_booking", True, lambda booking: booking),
    "complete_for_provider": ("escrow_booking", True, lambda booking: booking),
    "retry_events": ("chain_events_chainevent", False, lambda booking: create_dead_letter()),
    "mark_resolved": ("chain_events_chainevent", True, lambda booking: create_dead_letter()),
    "refund": ("chain_events_orphan", True, lambda booking: _orphan_row()),
    "ignore": ("chain_events_orphan", True, lambda booking: _orphan_row()),
    "resolve": ("reconciliation_reconciliationflag", True, _flag),
}


def changelist(name: str) -> str:
    return reverse(f"admin:{name}_changelist")


def run_action(client, name: str, action: str, pk, **extra):
    """Post an action as the changelist does (`index`), or its confirmation page (`confirm`, reason)."""
    data = {"action": action, "_selected_action": [pk], **extra}
    if "confirm" not in extra:
        data["index"] = "0"
    return client.post(changelist(name), data)


def log_entries(obj):
    return LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(obj), object_id=str(obj.pk))


def snapshot(obj):
    fresh = type(obj).objects.get(pk=obj.pk)
    return {f.attname: getattr(fresh, f.attname) for f in fresh._meta.concrete_fields if f.attname != "updated_at"}


@pytest.mark.parametrize("action", ACTIONS)
def test_anonymous_is_sent_to_login(clients, booking, action):
    name, _, factory = ACTIONS[action]
    obj = factory(booking)
    before = snapshot(obj)
    for response in (
        clients["anonymous"].get(changelist(name)),
        run_action(clients["anonymous"], name, action, obj.pk),
        run_action(clients["anonymous"], name, action, obj.pk, confirm="yes", reason=REASON),
    ):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert snapshot(obj) == before
    assert not log_entries(obj).exists()


@pytest.mark.parametrize("action", ACTIONS)
def test_read_only_staff_sees_but_cannot_act(clients, booking, action):
    name, _, factory = ACTIONS[action]
    obj = factory(booking)
    before = snapshot(obj)
    page = clients["reader"].get(changelist(name))
    assert page.status_code == 200
    assert f'value="{action}"'.encode() not in page.content  # no action offered
    detail = clients["reader"].get(reverse(f"admin:{name}_change", args=[obj.pk]))
    assert detail.status_code == 200  # the detail is readable
    assert run_action(clients["reader"], name, action, obj.pk).status_code == 403
    assert run_action(clients["reader"], name, action, obj.pk, confirm="yes", reason=REASON).status_code == 403
    assert snapshot(obj) == before
    assert not log_entries(obj).exists()
    assert not SentTransaction.objects.exists()
    assert not ReconciliationReport.objects.exists()


@pytest.mark.parametrize("action", ACTIONS)
def test_operator_is_offered_every_action(clients, booking, action):
    name, _, factory = ACTIONS[action]
    factory(booking)
    page = clients["operator"].get(changelist(name))
    assert page.status_code == 200
    assert f'value="{action}"'.encode() in page.content


@pytest.mark.parametrize("action", [a for a, (_, confirm, _) in ACTIONS.items() if confirm])
def test_confirmation_page_asks_for_a_reason(clients, booking, action):
    name, _, factory = ACTIONS[action]
    obj = factory(booking)
    before = snapshot(obj)
    page = run_action(clients["operator"], name, action, obj.pk)
    assert page.status_code == 200
    assert "admin/console/confirm_action.html" in [t.name for t in page.templates]
    assert b'name="reason"' in page.content and str(obj).encode() in page.content
    # Confirming without a reason shows the page again and does nothing.
    again = run_action(clients["operator"], name, action, obj.pk, confirm="yes", reason="   ")
    assert again.status_code == 200 and b"A reason is required" in again.content
    assert snapshot(obj) == before
    assert not log_entries(obj).exists()


# -- operators succeed: database-only actions --------------------------------------------------------
def test_operator_retries_a_dead_letter(clients, operator, dead_letter):
    response = run_action(clients["operator"], "chain_events_chainevent", "retry_events", dead_letter.pk)
    assert response.status_code == 302
    dead_letter.refresh_from_db()
    assert dead_letter.status == EventStatus.RETRY
    entry = log_entries(dead_letter).get()
    assert entry.user == operator and "Retry requested" in entry.change_message


def test_operator_marks_a_dead_letter_resolved_with_a_reason(clients, operator, dead_letter):
    response = run_action(clients["operator"], "chain_events_chainevent", "mark_resolved", dead_letter.pk,
                          confirm="yes", reason=REASON)
    assert response.status_code == 302
    dead_letter.refresh_from_db()
    assert (dead_letter.resolved_by, dead_letter.resolution_note) == ("staff:olivia", REASON)
    assert dead_letter.resolved_at is not None
    entry = log_entries(dead_letter).get()
    assert entry.user == operator and REASON in entry.change_message


def test_dead_letters_are_listed_first(clients):
    create_dead_letter(block_number=5)
    now_processed = create_dead_letter(chain_booking_id="0x" + "01" * 32, block_number=50)
    ChainEvent.objects.filter(pk=now_processed.pk).update(status=EventStatus.PROCESSED)
    page = clients["reader"].get(changelist("chain_events_chainevent"))
    ids = [row.pk for row in page.context["cl"].result_list]
    assert ids[0] != now_processed.pk and ids[-1] == now_processed.pk


def test_operator_ignores_an_orphan_with_a_reason(clients, operator):
    orphan = _orphan_row()
    response = run_action(clients["operator"], "chain_events_orphan", "ignore", orphan.pk, confirm="yes", reason=REASON)
    assert response.status_code == 302
    orphan.refresh_from_db()
    assert orphan.status == OrphanStatus.IGNORED and REASON in orphan.note and "staff:olivia" in orphan.note
    assert REASON in log_entries(orphan).get(user=operator).change_message


def test_operator_resolves_a_reconciliation_flag(clients, operator, booking):
    flag = _flag(booking)
    response = run_action(clients["operator"], "reconciliation_reconciliationflag", "resolve", flag.pk,
                          confirm="yes", reason=REASON)
    assert response.status_code == 302
    flag.refresh_from_db()
    assert (flag.resolved_by, flag.resolution_note) == ("staff:olivia", REASON)
    assert REASON in log_entries(flag).get(user=operator).change_message


def test_operator_acknowledges_what_the_chain_flagged_and_open_flags_keep_their_own_line(clients, operator, booking):
    booking = _flagged_by_the_chain(booking)
    flag = _flag(booking)
    attention.raise_attention(booking, AttentionKind.RECONCILIATION, "test")
    response = run_action(clients["operator"], "escrow_booking", "acknowledge_attention", booking.pk,
                          confirm="yes", reason=REASON)
    assert response.status_code == 302
    booking.refresh_from_db()
    chain_item, flag_item = booking.attention_items.order_by("id")
    assert (chain_item.reason, chain_item.acknowledged_by, chain_item.acknowledged_why) == (
        "chain: ServiceCompleted in tx 0x01 without a known payment", "staff:olivia", REASON)
    assert chain_item.acknowledged_at is not None
    assert (flag_item.kind, flag_item.reason, flag_item.is_open) == ("RECONCILIATION", "test", True)
    assert booking.needs_attention  # the open flag still keeps it on the list
    assert REASON in log_entries(booking).get(user=operator).change_message
    # Acknowledging again has nothing left to do; resolving the flag takes it off the list.
    from reconciliation.operations import ActionRefused, acknowledge_attention, resolve_flag

    with pytest.raises(ActionRefused, match="resolve those flags"):
        acknowledge_attention(booking, actor="staff:olivia", reason=REASON)
    resolve_flag(flag, actor="staff:olivia", note=REASON)
    booking.refresh_from_db()
    flag_item.refresh_from_db()
    assert not booking.needs_attention and not flag_item.is_open
    assert booking.attention_items.get(pk=chain_item.pk).acknowledged_why == REASON
    with pytest.raises(ActionRefused, match="nothing to acknowledge"):
        acknowledge_attention(booking, actor="staff:olivia", reason=REASON)


def test_a_refused_action_is_reported_and_logged(clients, operator):
    orphan = _orphan_row()
    Orphan.objects.filter(pk=orphan.pk).update(chain_status="CANCELLED")  # nothing left to refund
    response = clients["operator"].post(
        changelist("chain_events_orphan"),
        {"action": "refund", "_selected_action": [orphan.pk], "confirm": "yes", "reason": REASON}, follow=True,
    )
    assert response.status_code == 200
    assert b"not done" in response.content and b"nothing to refund" in response.content
    assert "refused" in log_entries(orphan).get(user=operator).change_message
    assert not SentTransaction.objects.exists()


# -- operators succeed: actions that talk to the chain ----------------------------------------------
@pytest.mark.chain
def test_operator_reconciles_a_booking_now(clients, operator, chain_settings, booking):
    response = run_action(clients["operator"], "escrow_booking", "reconcile_now", booking.pk)
    assert response.status_code == 302
    report = ReconciliationReport.objects.get()
    assert (report.trigger, report.actor, report.checked, report.status) == ("admin", "staff:olivia", 1, "OK")
    assert f"report #{report.pk}" in log_entries(booking).get(user=operator).change_message


@pytest.mark.chain
def test_operator_rebuilds_a_booking_the_database_has_ahead_of_the_chain(clients, operator, chain_settings, booking):
    from escrow.state import transition

    transition(booking, "PAID", source="admin", actor="test", note="database-only change")
    response = run_action(clients["operator"], "escrow_booking", "rebuild_from_chain", booking.pk,
                          confirm="yes", reason=REASON)
    assert response.status_code == 302
    booking.refresh_from_db()
    assert booking.status == "PENDING_PAYMENT"
    assert booking.status_changes.latest("id").actor == "staff:olivia"
    entry = log_entries(booking).get(user=operator)
    assert REASON in entry.change_message and "PAID → PENDING_PAYMENT" in entry.change_message


@pytest.mark.chain
def test_operator_emergency_cancels_a_paid_booking(clients, operator, paid_booking, chain_settings,
                                                    worker_in_this_process):
    response = run_action(clients["operator"], "escrow_booking", "emergency_cancel", paid_booking.pk,
                          confirm="yes", reason=REASON)
    assert response.status_code == 302
    sent = SentTransaction.objects.get(booking=paid_booking)
    assert (sent.purpose, sent.status, sent.actor, sent.reason) == (TxPurpose.EMERGENCY_CANCEL, TxStatus.MINED,
                                                                    "staff:olivia", REASON)
    assert chain_settings.get_booking(paid_booking.chain_booking_id)[-1] == 3  # CANCELLED on chain
    history = [entry.change_message for entry in log_entries(paid_booking).filter(user=operator)]
    assert len(history) == 2  # the console queued it, the worker sent it
    assert any(REASON in message and "queued" in message for message in history)
    assert any(f"sent by the worker: tx {sent.tx_hash} (MINED)" in message for message in history)


@pytest.mark.chain
def test_emergency_cancel_follows_the_chain_not_the_database_status(clients, operator, chain_settings):
    """Paid on chain, but the database never applied it and expired the booking: the money is
    escrowed and the refund must still be possible. Unpaid on chain: refused, nothing sent."""
    from escrow.models import StatusSource
    from escrow.state import transition
    from reconciliation.operations import ActionRefused, emergency_cancel_booking

    from .conftest import make_booking, pay_on_chain

    customer = chain_settings.accounts.customers[0]
    booking = make_booking(customer.address)
    pay_on_chain(chain_settings, booking, customer)  # not applied here
    transition(booking, "EXPIRED", source=StatusSource.RECONCILIATION, actor="test", note="authorization lapsed")
    balance_before = chain_settings.usdc_balance(customer.address)
    sent = emergency_cancel_booking(booking, actor="staff:olivia", reason=REASON)
    assert sent.status == TxStatus.MINED
    assert chain_settings.usdc_balance(customer.address) == balance_before + 25_000_000
    unpaid = make_booking(customer.address)
    with pytest.raises(ActionRefused, match="the chain shows NONE"):
        emergency_cancel_booking(unpaid, actor="staff:olivia", reason=REASON)
    assert not SentTransaction.objects.filter(booking=unpaid).exists()


@pytest.mark.chain
def test_operator_refunds_an_orphan(clients, operator, orphan, chain_settings, worker_in_this_process):
    customer = chain_settings.accounts.customers[1].address
    balance_before = chain_settings.usdc_balance(customer)
    response = run_action(clients["operator"], "chain_events_orphan", "refund", orphan.pk, confirm="yes", reason=REASON)
    assert response.status_code == 302
    sent = SentTransaction.objects.get(orphan=orphan)
    assert (sent.status, sent.actor, sent.reason) == (TxStatus.MINED, "staff:olivia", REASON)
    assert chain_settings.usdc_balance(customer) == balance_before + 42_000_000
    history = [entry.change_message for entry in log_entries(orphan).filter(user=operator)]
    assert len(history) == 2  # the console queued it, the worker sent it
    assert any(REASON in message and "queued" in message for message in history)
    assert any(f"sent by the worker: tx {sent.tx_hash} (MINED)" in message for message in history)


@pytest.mark.chain
def test_operator_pauses_the_contract_through_the_confirmation_page(clients, operator, chain_settings,
                                                                     worker_in_this_process):
    url = reverse("admin:reconciliation_emergencypause_pause")
    assert clients["anonymous"].get(url).status_code == 302
    assert clients["reader"].get(url).status_code == 403
    assert clients["reader"].post(url, {"reason": REASON}).status_code == 403
    assert b"Pause the contract" not in clients["reader"].get(changelist("reconciliation_emergencypause")).content
    page = clients["operator"].get(url)
    assert page.status_code == 200 and b'name="reason"' in page.content
    response = clients["operator"].post(url, {"reason": REASON, "confirm": "yes"})
    assert response.status_code == 302
    entry = EmergencyPause.objects.get()
    assert (entry.action, entry.actor, entry.reason, entry.succeeded) == ("pause", "staff:olivia", REASON, True)
    assert chain_settings.escrow_contract.functions.paused().call() is True
    assert REASON in log_entries(entry).get(user=operator).change_message


def test_an_acknowledgement_note_never_hides_a_later_reason(booking):
    """The chain sync raises each reason once, by its text; the operator's note is not a reason."""
    later = "chain: BookingCancelled in tx 0x02 after COMPLETED ignored"
    attention.raise_attention(
        booking, AttentionKind.CHAIN_ANOMALY, "chain: second BookingCreatedAndPaid in tx 0x01 ignored",
    )
    attention.acknowledge_chain_items(booking, by="staff:olivia", why=f"expect '{later}' next")
    raised = attention.raised_chain_reasons([booking.pk])[booking.pk]
    assert raised == {"chain: second BookingCreatedAndPaid in tx 0x01 ignored"}
    assert later not in raised
