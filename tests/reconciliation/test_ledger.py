"""The ledger check (reconciliation.ledger) against a real anvil and PostgreSQL: a clean ledger
is OK at its pinned block; a tampered database is named booking by booking and account by
account with both figures (report, metrics, console line, exit code 1); a change on chain after
the pinned block does not count; the beat task runs it. And the console index reads the
contract's paused() from the worker's health entry, never from the node."""
from __future__ import annotations

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from prometheus_client import REGISTRY

from bookme.console import attention_summary
from bookme.health import refresh_chain_health
from chain_events.models import SyncCursor
from escrow.models import Booking, BookingStatus, PlatformFee, ProviderEarnings
from reconciliation import ledger, tasks
from reconciliation.models import SentTransaction, TxPurpose, TxStatus
from reconciliation.selectors import PAUSED_CACHE_KEY
from tests.rpc_proxy import RpcProxy

from .conftest import scan_to_head

pytestmark = [pytest.mark.django_db, pytest.mark.chain]


def by_kind(report) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for mismatch in report.mismatches:
        out.setdefault(mismatch["kind"], []).append(mismatch)
    return out


def gauge(name: str, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def ledger_line():
    return next(item for item in attention_summary().items if item.label == "Ledger check")


def test_a_clean_ledger_is_ok_and_a_tampered_one_is_named_with_both_figures(
    chain_settings, make_booking, pay, customer, provider
):
    completed, held = make_booking(amount="40.00"), make_booking(amount="25.50")
    pay(completed)
    pay(held)
    chain_settings.complete_service(completed.chain_booking_id, customer.address)
    make_booking()  # never paid
    scan_to_head(chain_settings)

    call_command("check_ledger")  # exit 0
    report = ledger.last_ledger_report()
    assert report.ok and report.mismatches == [] and report.error == ""
    assert report.chain_block == SyncCursor.objects.get().last_block
    assert report.figures["escrow_balance"] == report.figures["held_by_paid_bookings"] == "25500000"
    assert report.rpc_round_trips <= 6  # block, getBookings + balance, operator nonces: batched
    assert (gauge("bookme_ledger_ok"), gauge("bookme_ledger_checked_block")) == (1, report.chain_block)
    assert (ledger_line().count, ledger_line().severity) == ("OK", "ok")

    # One base unit off a fee row, a status changed by hand, earnings one unit off, and a row
    # that says an operator transaction mined under a nonce the chain has not used.
    fee = PlatformFee.objects.get(booking=completed)
    PlatformFee.objects.filter(pk=fee.pk).update(platform_amount=fee.platform_amount + 1)
    Booking.objects.filter(pk=held.pk).update(status=BookingStatus.CANCELLED)
    earnings = ProviderEarnings.objects.get()
    ProviderEarnings.objects.filter(pk=earnings.pk).update(total_earned=earnings.total_earned - 1)
    operator = chain_settings.accounts.operator.address
    SentTransaction.objects.create(
        purpose=TxPurpose.OPERATOR_COMPLETE, chain_id=chain_settings.chain_id, from_address=operator,
        to_address=chain_settings.escrow, data="0x", nonce=500, status=TxStatus.MINED, block_number=1,
        tx_hash="0x" + "ab" * 32,
    )

    with pytest.raises(CommandError) as stopped:
        call_command("check_ledger")
    assert stopped.value.returncode == 1
    report = ledger.last_ledger_report()
    kinds = by_kind(report)
    assert not report.ok and report.mismatch_count == 4
    (fee_row,) = kinds["platform_fee"]
    assert (fee_row["booking"], fee_row["chain_booking_id"]) == (completed.pk, completed.chain_booking_id)
    platform, inviter, provider_part = fee.platform_amount, fee.inviter_amount, fee.provider_amount
    assert fee_row["database"] == f"platform {platform + 1} / inviter {inviter} / provider {provider_part}"
    assert fee_row["chain"] == f"platform {platform} / inviter {inviter} / provider {provider_part}"
    (status,) = kinds["booking_status"]
    assert (status["booking"], status["database"], status["chain"]) == (held.pk, "CANCELLED", "PAID")
    (earned,) = kinds["provider_earnings"]
    assert earned["account"] == provider.address.lower()
    assert earned["database"] == f"{earnings.total_earned - 1} in 1 services"
    assert earned["chain"] == f"{earnings.total_earned} in 1 services"
    (nonce,) = kinds["operator_nonce"]
    assert nonce["account"] == operator and nonce["database"].startswith("nonce 500 MINED")
    assert gauge("bookme_ledger_ok") == 0
    assert gauge("bookme_ledger_mismatches", kind="platform_fee") == 1
    assert gauge("bookme_ledger_mismatches", kind="escrow_balance") == 0
    assert gauge("bookme_ledger_last_run_timestamp_seconds") == report.finished_at.timestamp()
    line = ledger_line()
    assert (line.count, line.severity) == ("4 mismatches", "critical")
    assert f"block {report.chain_block}" in line.detail and "platform_fee" in line.detail


def test_a_change_on_chain_after_the_pinned_block_does_not_count_and_beat_runs_the_check(
    chain_settings, make_booking, pay, customer
):
    booking = make_booking(amount="12.00")
    pay(booking)
    scan_to_head(chain_settings)
    # After the scanner's last block: a completion and one base unit sent straight to the escrow.
    chain_settings.complete_service(booking.chain_booking_id, customer.address)
    chain_settings.transact(chain_settings.usdc_contract.functions.transfer(chain_settings.escrow, 1), customer.address)

    outcome = tasks.check_ledger()
    assert outcome["ok"] and outcome["mismatches"] == 0
    assert outcome["chain_block"] == SyncCursor.objects.get().last_block < chain_settings.block_number()

    scan_to_head(chain_settings)  # now the pin covers both: the completion agrees, the stray unit does not
    outcome = tasks.check_ledger()
    report = ledger.last_ledger_report()
    assert not outcome["ok"] and [m["kind"] for m in report.mismatches] == ["escrow_balance"]
    assert (report.mismatches[0]["database"], report.mismatches[0]["chain"]) == ("0", "1")


def test_the_console_reads_paused_from_the_workers_health_entry_without_asking_the_node(chain_settings, settings):
    chain_settings.transact(chain_settings.escrow_contract.functions.pause(), chain_settings.accounts.operator.address)
    with RpcProxy(chain_settings.url) as proxy:
        settings.CHAIN_RPC_URLS = [proxy.url]
        unknown = {item.label: item for item in attention_summary().items}["Contract paused"]
        assert (unknown.count, unknown.severity) == ("unknown", "warning")  # the worker has not looked yet
        refresh_chain_health()  # the worker's task
        asked = proxy.requests
        cache.delete(PAUSED_CACHE_KEY)  # the selector's own cache cold: it would ask the node
        paused = {item.label: item for item in attention_summary().items}["Contract paused"]
        assert (paused.count, paused.severity) == ("yes", "critical")
        assert proxy.requests == asked
