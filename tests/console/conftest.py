"""Console fixtures: an operator, a read-only staff user, and things to act on (a paid booking,
an orphan really paid on chain, a dead-lettered event)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from chain_events.models import ChainEvent, EventStatus, Orphan
from common.console import OPERATORS_GROUP
from escrow.fastpath import process_transaction
from escrow.models import Booking
from escrow.services import create_booking
from escrow.signing import sign_payment_authorization
from tests.escrow.helpers import wallet


@pytest.fixture
def operator(django_user_model):
    # get_or_create: live_server tests flush the tables, the group created by the migration included.
    group, _ = Group.objects.get_or_create(name=OPERATORS_GROUP)
    user = django_user_model.objects.create_user("olivia", password="operator-pass-123", is_staff=True)
    user.groups.add(group)
    return user


@pytest.fixture
def reader(django_user_model):
    return django_user_model.objects.create_user("rory", password="reader-pass-123", is_staff=True)


@pytest.fixture
def clients(operator, reader):
    operator_client, reader_client = Client(), Client()
    operator_client.force_login(operator)
    reader_client.force_login(reader)
    return {"operator": operator_client, "reader": reader_client, "anonymous": Client()}


@pytest.fixture
def worker_in_this_process():
    """What the console queues for the worker runs at once, here (Celery's eager mode), with this
    process's operator key. The real worker runs it in test_console_sends_worker.py."""
    from bookme.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = before


def make_booking(customer_address: str, **overrides) -> Booking:
    fields = {
        "customer": customer_address,
        "provider": wallet("console-provider").address,
        "amount": "25.00",
        "scheduled_at": timezone.now() + timedelta(days=2),
        "description": "console test",
    }
    fields.update(overrides)
    return create_booking(**fields)


def pay_on_chain(chain, booking: Booking, customer) -> str:
    auth = sign_payment_authorization(booking)
    receipt = chain.pay_booking(auth.message, auth.signature, customer.address)
    return receipt["transactionHash"].to_0x_hex()


@pytest.fixture
def booking(db):
    return make_booking(wallet("console-customer").address)


@pytest.fixture
def paid_booking(chain_settings):
    """A booking paid on chain and applied (PAID) through the receipt fast path."""
    customer = chain_settings.accounts.customers[0]
    booking = make_booking(customer.address)
    process_transaction(pay_on_chain(chain_settings, booking, customer))
    booking.refresh_from_db()
    assert booking.status == "PAID"
    return booking


def create_orphan(chain) -> Orphan:
    """Pay a booking on chain, then lose it from the database: its payment log makes an orphan."""
    customer = chain.accounts.customers[1]
    booking = make_booking(customer.address, amount="42.00")
    tx_hash = pay_on_chain(chain, booking, customer)
    booking.signatures.all().delete()
    booking.delete()
    process_transaction(tx_hash)
    return Orphan.objects.get(chain_booking_id=booking.chain_booking_id)


@pytest.fixture
def orphan(chain_settings):
    orphan = create_orphan(chain_settings)
    assert (orphan.status, orphan.chain_status) == ("OPEN", "PAID")
    return orphan


def create_dead_letter(chain_booking_id: str = "0x" + "ab" * 32, block_number: int = 7) -> ChainEvent:
    now = timezone.now()
    return ChainEvent.objects.create(
        chain_id=31337, contract_address="0x" + "11" * 20, block_number=block_number, block_hash="0x" + "cd" * 32,
        tx_hash="0x" + f"{block_number:064x}", log_index=0, event_name="ServiceCompleted",
        args={"bookingId": chain_booking_id}, chain_booking_id=chain_booking_id, status=EventStatus.DEAD_LETTER,
        retry_count=5, last_error="IllegalTransition: booking cannot go from PENDING_PAYMENT to COMPLETED",
        created_at=now, updated_at=now,
    )


@pytest.fixture
def dead_letter(db):
    return create_dead_letter()
