"""Console actions that send a transaction are queued for the worker: the web process never holds
the operator key. Here this test process plays the web process (no operator key); the queued
Celery message is taken from the broker (Redis) and run as the worker runs it, with the key.
The same path with a real worker process: test_console_sends_worker.py."""
from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from bookme.celery import app
from common.config import Secret
from reconciliation.models import EmergencyPause, SentTransaction, TxStatus

from .test_admin_permissions import REASON, changelist, run_action

pytestmark = [pytest.mark.chain, pytest.mark.django_db]

OPERATOR_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"  # pytest.ini's


@pytest.fixture
def web_process(settings, chain_settings):
    """Settings as the web process has them: no key that sends transactions."""
    settings.OPERATOR_PRIVATE_KEY = None
    settings.CONTRACT_OWNER_PRIVATE_KEY = None
    return settings


def take_queued_tasks() -> list[tuple[str, list, dict]]:
    """(task name, args, kwargs) of every message waiting in the broker's default queue, taken off it."""
    taken = []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(app.conf.task_default_queue)
        try:
            while True:
                message = queue.get(block=False)
                args, kwargs, _ = message.decode()
                taken.append((message.headers["task"], args, kwargs))
                message.ack()
        except queue.Empty:
            pass
        finally:
            queue.close()
    return taken


def run_as_the_worker(settings, queued: list[tuple[str, list, dict]]) -> list[dict]:
    """Run queued tasks in this process as the worker would: with the operator key."""
    settings.OPERATOR_PRIVATE_KEY = Secret(OPERATOR_KEY)
    return [app.tasks[name](*args, **kwargs) for name, args, kwargs in queued]


def history(obj) -> list[str]:
    return list(LogEntry.objects.filter(object_id=str(obj.pk)).order_by("id").values_list("change_message", flat=True))


def test_emergency_cancel_is_queued_and_the_worker_sends_it(clients, paid_booking, web_process, chain_settings):
    response = run_action(clients["operator"], "escrow_booking", "emergency_cancel", paid_booking.pk,
                          confirm="yes", reason=REASON)
    assert response.status_code == 302
    assert not SentTransaction.objects.exists()  # nothing sent by the web process
    queued = take_queued_tasks()
    assert queued == [("reconciliation.send_emergency_cancel", [paid_booking.pk, "staff:olivia", REASON], {})]
    assert "queued" in history(paid_booking)[0]

    [outcome] = run_as_the_worker(web_process, queued)
    sent = SentTransaction.objects.get(booking=paid_booking)
    assert outcome == {"done": True, "tx_hash": sent.tx_hash, "status": TxStatus.MINED}
    operator_address = chain_settings.accounts.operator.address
    assert (sent.actor, sent.reason, sent.from_address) == ("staff:olivia", REASON, operator_address)
    assert chain_settings.get_booking(paid_booking.chain_booking_id)[-1] == 3  # CANCELLED on chain
    assert history(paid_booking)[-1] == f"Emergency cancel sent by the worker: tx {sent.tx_hash} (MINED)"


def test_orphan_refund_is_queued_and_the_worker_sends_it(clients, orphan, web_process):
    response = run_action(clients["operator"], "chain_events_orphan", "refund", orphan.pk, confirm="yes", reason=REASON)
    assert response.status_code == 302
    assert not SentTransaction.objects.exists()
    queued = take_queued_tasks()
    assert queued == [("reconciliation.send_orphan_refund", [orphan.pk, "staff:olivia", REASON], {})]
    [outcome] = run_as_the_worker(web_process, queued)
    assert outcome["done"] and SentTransaction.objects.get(orphan=orphan).status == TxStatus.MINED


def test_pause_is_queued_and_the_worker_sends_it(clients, operator, web_process, chain_settings):
    response = clients["operator"].post(reverse("admin:reconciliation_emergencypause_pause"),
                                        {"reason": REASON, "confirm": "yes"}, follow=True)
    assert response.status_code == 200
    assert "Pause queued" in response.content.decode()
    assert not EmergencyPause.objects.exists() and chain_settings.escrow_contract.functions.paused().call() is False
    queued = take_queued_tasks()
    assert queued == [("reconciliation.send_pause", ["staff:olivia", REASON], {})]
    run_as_the_worker(web_process, queued)
    entry = EmergencyPause.objects.get()
    assert (entry.action, entry.actor, entry.succeeded) == ("pause", "staff:olivia", True)
    assert chain_settings.escrow_contract.functions.paused().call() is True
    assert history(entry) == [f"Pause contract: {REASON} → tx {entry.transaction.tx_hash}"]


def test_an_obvious_refusal_is_shown_at_once_and_nothing_is_queued(clients, booking, web_process):
    """An unpaid booking has nothing escrowed: the console says so on the spot (one chain read)."""
    response = clients["operator"].post(
        changelist("escrow_booking"),
        {"action": "emergency_cancel", "_selected_action": [booking.pk], "confirm": "yes", "reason": REASON},
        follow=True,
    )
    assert "not done: nothing to refund: the chain shows NONE" in response.content.decode()
    assert take_queued_tasks() == []


def test_a_request_delivered_twice_sends_once_and_the_refusal_is_in_the_history(clients, paid_booking, web_process):
    for _ in range(2):  # two clicks before the worker ran the first: both pass the console's check
        run_action(clients["operator"], "escrow_booking", "emergency_cancel", paid_booking.pk,
                   confirm="yes", reason=REASON)
    first, second = run_as_the_worker(web_process, take_queued_tasks())
    assert first["done"] and not second["done"]
    assert SentTransaction.objects.filter(booking=paid_booking).count() == 1
    # The chain already shows the refund (else: the transaction already sent): refused, recorded.
    assert history(paid_booking)[-1] == ("Emergency cancel not done by the worker: nothing to refund: the chain "
                                         "shows CANCELLED for this booking (the database says PAID)")


def test_a_node_outage_in_the_worker_is_recorded_not_lost(clients, paid_booking, web_process):
    run_action(clients["operator"], "escrow_booking", "emergency_cancel", paid_booking.pk, confirm="yes", reason=REASON)
    queued = take_queued_tasks()
    web_process.CHAIN_RPC_URLS, web_process.RPC_RETRIES = ["http://127.0.0.1:9"], 0
    [outcome] = run_as_the_worker(web_process, queued)
    assert not outcome["done"] and "all RPC endpoints failed" in outcome["error"]
    assert "Emergency cancel not done by the worker: all RPC endpoints failed" in history(paid_booking)[-1]
    assert not SentTransaction.objects.exists()
