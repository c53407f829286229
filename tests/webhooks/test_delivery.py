"""Webhook fan-out and delivery in this process against a real HTTP receiver, PostgreSQL and the
console: the body and its signature, order per booking, one sender at a time, DEAD after the set
number of tries and sent again from the console, refused URLs at save and at delivery, and a
deactivated endpoint. The real worker runs them in test_worker_end_to_end.py."""
from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from tests.console.test_admin_permissions import REASON, run_action
from webhooks import delivery, fanout, metrics, tasks
from webhooks.models import DeliveryStatus, WebhookDelivery

from .conftest import add_endpoint, move, new_booking, publish

pytestmark = pytest.mark.django_db


def sample(metric, **labels) -> float:
    """A sample of one of the webhooks' metrics (the whole registry would also ask the chain)."""
    return next((s.value for family in metric.collect() for s in family.samples
                 if s.labels == labels and not s.name.endswith("_created")), 0)


def attempt_until_finished(delivery_id: int, deadline_seconds: float = 10) -> list[str]:
    """Attempt as the worker's retries would, each as soon as it is due."""
    results, deadline = [], time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        outcome = delivery.attempt(delivery_id)
        if outcome.result != "skipped":
            results.append(outcome.result)
        if outcome.finished:
            return results
        time.sleep(0.01)
    raise AssertionError(f"delivery {delivery_id} not finished: {results}")


def test_a_status_change_reaches_the_receiver_signed(webhook_settings, receiver):
    endpoint = add_endpoint(receiver)
    booking = new_booking("signed")
    move(booking, "PAID")
    publish()
    result = fanout.fan_out()
    assert (result.notifications, result.deliveries) == (2, 2)

    for pk in delivery.heads():
        attempt_until_finished(pk)
    for pk in delivery.heads():  # the second of the booking, once the first is delivered
        attempt_until_finished(pk)

    assert len(endpoint.secret) >= 6 + 64
    assert [r["valid"] for r in receiver.requests] == [True, True]
    first, second = (r["event"] for r in receiver.requests)
    assert [first["type"], second["type"]] == ["booking.created", "booking.paid"]
    assert second["data"] | {"occurred_at": None} == {
        "seq": first["data"]["seq"] + 1, "booking": str(booking.uuid), "from_status": "PENDING_PAYMENT",
        "to_status": "PAID", "source": "chain", "tx_hash": "0x" + "ab" * 32,
        "customer_address": booking.customer_address, "provider_address": booking.provider_address,
        "inviter_address": None, "occurred_at": None,
    }
    assert {r["header_id"] for r in receiver.requests} == {first["id"], second["id"]}
    assert receiver.requests[0]["path"] == "/hooks/bookme?x=1"
    assert receiver.requests[0]["host"] == receiver.url.split("/")[2]  # the name, though sent to the checked IP
    rows = WebhookDelivery.objects.order_by("seq")
    assert [(d.status, d.attempts, d.last_status_code) for d in rows] == [("DELIVERED", 1, 200)] * 2
    assert [d.event_id for d in rows] == [first["id"], second["id"]]
    # A tampered body does not verify with the secret.
    assert not receiver.verify({"BookMe-Signature": "t=1,v1=00"}, b"{}")


def test_fan_out_happens_once_even_when_two_run_at_once(webhook_settings, receiver, transactional_db):
    add_endpoint(receiver)
    add_endpoint(receiver, url=receiver.url + "&second", event_kinds=["booking.completed"])
    for label in "abc":
        move(new_booking(label), "PAID", "COMPLETED")
    publish()
    results = []

    def run():
        results.append(fanout.fan_out(batch_size=2))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.notifications for r in results) == 9
    assert WebhookDelivery.objects.filter(endpoint__event_kinds=[]).count() == 9
    assert WebhookDelivery.objects.exclude(endpoint__event_kinds=[]).count() == 3  # the completions only
    assert fanout.fan_out().deliveries == 0


def test_only_the_oldest_delivery_of_a_booking_is_sent_and_one_sender_at_a_time(webhook_settings, receiver,
                                                                                  transactional_db):
    add_endpoint(receiver)
    booking, other = new_booking("order"), new_booking("other")
    move(booking, "PAID")
    publish()
    fanout.fan_out()
    created, paid = WebhookDelivery.objects.filter(booking=booking).order_by("seq")
    assert delivery.attempt(paid.pk).result == "skipped"  # waits behind booking.created
    assert sorted(delivery.heads()) == sorted([created.pk, WebhookDelivery.objects.get(booking=other).pk])

    receiver.handling_seconds = 0.3  # both workers' attempts overlap in time
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(delivery.attempt(created.pk))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.result for o in outcomes) == ["delivered", "skipped", "skipped"]
    assert [r["id"] for r in receiver.requests] == [created.event_id]
    assert delivery.heads([(created.endpoint_id, booking.pk)]) == [paid.pk]


def test_dead_after_the_set_number_of_tries_then_sent_again_from_the_console(webhook_settings, receiver,
                                                                           clients, transactional_db):
    dead_before = sample(metrics.FINISHED, outcome="DEAD")
    add_endpoint(receiver)
    receiver.answer = lambda number, event: "redirect" if number == 0 else "fail"
    new_booking("dead")
    publish()
    fanout.fan_out()
    (pk,) = delivery.heads()
    assert attempt_until_finished(pk) == ["failed", "failed", "dead"]
    dead = WebhookDelivery.objects.get(pk=pk)
    assert (dead.status, dead.attempts, dead.last_status_code) == ("DEAD", 3, 500)
    assert [(a.status_code, a.error) for a in dead.attempt_log.all()] == [
        (302, "HTTP 302 (redirect not followed)"), (500, "HTTP 500 (not a 2xx answer)"),
        (500, "HTTP 500 (not a 2xx answer)"),
    ]
    assert len(receiver.requests) == 3 and not any("followed" in r["path"] for r in receiver.requests)
    assert sample(metrics.FINISHED, outcome="DEAD") == dead_before + 1
    assert sample(metrics.DeliveryStateCollector(), status="DEAD") == 1

    receiver.answer = lambda number, event: "ok"
    assert clients["reader"].post(reverse("admin:webhooks_webhookdelivery_changelist"),
                                  {"action": "redeliver", "_selected_action": [pk], "index": "0"}).status_code == 403
    from bookme.celery import app

    app.conf.task_always_eager = True  # the queued delivery runs here, at once
    try:
        response = run_action(clients["operator"], "webhooks_webhookdelivery", "redeliver", pk, confirm="yes",
                              reason=REASON)
    finally:
        app.conf.task_always_eager = False
    assert response.status_code == 302
    again = WebhookDelivery.objects.get(pk=pk)
    assert (again.status, again.attempts, again.redelivered_by) == ("DELIVERED", 4, "staff:olivia")
    assert again.attempt_log.count() == 4
    assert receiver.processed.keys() == {again.event_id}
    assert LogEntry.objects.filter(object_id=str(pk), change_message__startswith="Send again: " + REASON).exists()
    page = clients["reader"].get(reverse("admin:webhooks_webhookdelivery_change", args=[pk]))
    assert page.status_code == 200 and b"HTTP 500" in page.content


REFUSED = {
    "http://hooks.example.com/bookme": "only https://",
    "https://127.0.0.1/hooks": "loopback address",
    "https://10.1.2.3/hooks": "private address",
    "https://169.254.169.254/latest/meta-data": "link-local address",
    "https://[::1]/hooks": "loopback address",
    "https://localhost/hooks": "loopback address",
}


def test_refused_urls_at_save_in_the_console(clients, settings):
    settings.WEBHOOK_ALLOW_HTTP = settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    add_url = reverse("admin:webhooks_webhookendpoint_add")
    for url, why in REFUSED.items():
        response = clients["operator"].post(add_url, {"url": url, "description": "", "active": "on"})
        assert response.status_code == 200, url
        assert why in response.content.decode(), (url, response.content.decode()[:3000])
    assert clients["operator"].get(add_url).status_code == 200
    assert clients["reader"].get(add_url).status_code == 403

    settings.WEBHOOK_ALLOW_HTTP = settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    response = clients["operator"].post(add_url, {"url": "http://127.0.0.1:9/hooks", "description": "local",
                                                  "event_kinds": ["booking.paid", "booking.completed"],
                                                  "active": "on"})
    assert response.status_code == 302, response.content.decode()[:3000]
    from webhooks.models import WebhookEndpoint

    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.event_kinds == ["booking.paid", "booking.completed"]
    page = clients["operator"].get(reverse("admin:webhooks_webhookendpoint_change", args=[endpoint.pk]))
    assert endpoint.secret in page.content.decode()


def test_a_url_refused_at_delivery_is_an_attempt_and_dead_at_once(webhook_settings, receiver, transactional_db):
    add_endpoint(receiver)  # saved while loopback was allowed
    new_booking("refused")
    publish()
    fanout.fan_out()
    webhook_settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False  # e.g. its name resolves elsewhere now
    (pk,) = delivery.heads()
    assert delivery.attempt(pk).result == "dead"
    dead = WebhookDelivery.objects.get(pk=pk)
    assert dead.status == "DEAD" and "127.0.0.1, a loopback address" in dead.last_error
    (attempt,) = dead.attempt_log.all()
    assert attempt.status_code is None and attempt.error.startswith("refused: ")
    assert receiver.requests == []

    webhook_settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    webhook_settings.WEBHOOK_ALLOW_HTTP = False
    move(new_booking("refused-http"), "PAID")
    publish()
    fanout.fan_out()
    for pk in delivery.heads():
        assert delivery.attempt(pk).result == "dead"
    assert "only https://" in WebhookDelivery.objects.filter(status="DEAD").latest("id").last_error
    assert receiver.requests == []


def test_a_deactivated_endpoint_gets_nothing_new(webhook_settings, receiver, clients, transactional_db):
    endpoint = add_endpoint(receiver)
    booking = new_booking("inactive")
    publish()
    fanout.fan_out()
    response = run_action(clients["operator"], "webhooks_webhookendpoint", "deactivate", endpoint.pk, confirm="yes",
                          reason=REASON)
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.active is False
    move(booking, "PAID", "COMPLETED")
    publish()
    assert fanout.fan_out().deliveries == 0
    assert WebhookDelivery.objects.count() == 1
    assert delivery.heads() == []  # the one made before waits, unsent
    (waiting,) = WebhookDelivery.objects.all()
    assert delivery.attempt(waiting.pk).result == "skipped"
    assert receiver.requests == []
    assert tasks.sweep() == {"notifications": 0, "deliveries": 0, "requeued": 0}
    assert WebhookDelivery.objects.get().status == DeliveryStatus.PENDING


def test_the_sweep_queues_again_what_a_dead_worker_held(webhook_settings, receiver,
                                                        django_capture_on_commit_callbacks):
    webhook_settings.WEBHOOK_REQUEUE_AFTER_SECONDS = 60
    add_endpoint(receiver)
    new_booking("lost")
    publish()
    with django_capture_on_commit_callbacks() as queued:  # not run: no broker needed here
        assert tasks.sweep() == {"notifications": 1, "deliveries": 1, "requeued": 0}  # fresh: queued, not requeued
    assert len(queued) == 1
    lost = WebhookDelivery.objects.get()
    a_minute_ago = lost.created_at - timedelta(seconds=61)
    # A worker claimed it and died: its lease still runs, so nobody else may send it yet.
    WebhookDelivery.objects.update(next_attempt_at=a_minute_ago, lease_token=uuid.uuid4(),
                                   lease_expires_at=timezone.now() + timedelta(seconds=30))
    with django_capture_on_commit_callbacks():
        assert tasks.sweep()["requeued"] == 0
    assert delivery.attempt(lost.pk).result == "skipped"
    WebhookDelivery.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))  # the lease ran out
    with django_capture_on_commit_callbacks() as queued:
        assert tasks.sweep()["requeued"] == 1
    assert len(queued) == 1
    assert delivery.attempt(lost.pk).result == "delivered"
