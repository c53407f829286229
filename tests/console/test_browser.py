"""The operators' console in a real browser (headless Chromium driven by selenium).

An operator logs in, retries a dead-lettered event, and refunds an orphan (really paid on the
test anvil) through the confirmation page that asks for a reason.
"""
from __future__ import annotations

import shutil
import tempfile

import pytest
from django.contrib.admin.models import LogEntry
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from chain_events.models import EventStatus, OrphanStatus
from escrow.fastpath import process_transaction
from reconciliation.models import SentTransaction, TxStatus

from .conftest import create_dead_letter, create_orphan

pytestmark = [pytest.mark.browser, pytest.mark.chain, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="bookme-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def run_action(browser, action: str, pk) -> None:
    browser.find_element(By.CSS_SELECTOR, f"input[name='_selected_action'][value='{pk}']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value(action)
    browser.find_element(By.CSS_SELECTOR, "button[name='index']").click()


def test_operator_retries_a_dead_letter_and_refunds_an_orphan(browser, live_server, chain_settings, operator,
                                                               worker_in_this_process):
    dead_letter = create_dead_letter()
    orphan = create_orphan(chain_settings)
    customer = chain_settings.accounts.customers[1].address
    balance_before = chain_settings.usdc_balance(customer)

    browser.get(f"{live_server.url}/admin/")
    browser.find_element(By.NAME, "username").send_keys("olivia")
    browser.find_element(By.NAME, "password").send_keys("operator-pass-123")
    browser.find_element(By.CSS_SELECTOR, "input[type='submit']").click()
    attention = browser.find_element(By.ID, "console-attention").text
    assert "Dead-lettered chain events" in attention and "Open orphans" in attention

    # Retry the dead letter (listed first).
    browser.get(f"{live_server.url}/admin/chain_events/chainevent/")
    first_row = browser.find_element(By.CSS_SELECTOR, "#result_list tbody tr")
    assert "Dead letter" in first_row.text
    run_action(browser, "retry_events", dead_letter.pk)
    assert "queued for retry" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    dead_letter.refresh_from_db()
    assert dead_letter.status == EventStatus.RETRY

    # Refund the orphan through the confirmation page.
    browser.get(f"{live_server.url}/admin/chain_events/orphan/")
    run_action(browser, "refund", orphan.pk)
    assert "emergencyCancelBooking" in browser.find_element(By.ID, "console-warning").text
    browser.find_element(By.NAME, "reason").send_keys("paid for a booking we lost in a restore")
    browser.find_element(By.ID, "console-confirm").click()
    assert "Refund queued: 1 of 1" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text

    refund = SentTransaction.objects.get(orphan=orphan)
    assert (refund.status, refund.actor) == (TxStatus.MINED, "staff:olivia")
    assert chain_settings.usdc_balance(customer) == balance_before + 42_000_000
    assert LogEntry.objects.filter(user=operator, object_id=str(orphan.pk),
                                   change_message__contains="lost in a restore").exists()
    # The refund's BookingCancelled log, once processed, resolves the orphan.
    process_transaction(refund.tx_hash)
    orphan.refresh_from_db()
    assert (orphan.status, orphan.chain_status, orphan.resolved_by) == (OrphanStatus.RESOLVED, "CANCELLED", "chain")
    browser.get(f"{live_server.url}/admin/chain_events/orphan/{orphan.pk}/change/")
    assert "Resolved" in browser.find_element(By.ID, "content-main").text
