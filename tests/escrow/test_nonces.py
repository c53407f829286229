"""Authorization nonces come from a PostgreSQL sequence (fetched in blocks per process) above
random bits: unique across threads, processes, restarts and database restores, and every
signed authorization records its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connection, connections

from escrow.models import SignatureNonce
from escrow.services import issue_payment_authorization
from escrow.signing import NONCE_RANDOM_BITS, allocate_nonce

REPO_ROOT = Path(__file__).resolve().parents[2]
PER_WORKER = 200
_ALLOCATE_IN_A_PROCESS = f"""
import json, django
django.setup()
from escrow.signing import allocate_nonce
print(json.dumps([allocate_nonce() for _ in range({PER_WORKER})]))
"""


def _in_threads(count: int, work) -> list:
    results, errors = [], []

    def run():
        try:
            results.append(work())
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_threads_never_get_the_same_nonce():
    batches = _in_threads(4, lambda: [allocate_nonce() for _ in range(PER_WORKER)])
    nonces = [n for batch in batches for n in batch]
    assert len(nonces) == len(set(nonces)) == 4 * PER_WORKER


@pytest.mark.django_db(transaction=True)
def test_concurrent_processes_and_restarts_never_get_the_same_nonce():
    """Two processes at once, then a third started afterwards (a restart): all distinct, and the
    newcomer continues past everything handed out before (the sequence lives in PostgreSQL)."""
    settings_dict = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/{settings_dict['NAME']}",
        "DJANGO_SETTINGS_MODULE": "bookme.settings",
        "PYTHONPATH": str(REPO_ROOT),
    }

    def start():
        return subprocess.Popen([sys.executable, "-c", _ALLOCATE_IN_A_PROCESS], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(process) -> list[int]:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    first, second = start(), start()
    together = result(first) + result(second)
    restarted = result(start())
    assert len(set(together)) == len(together) == 2 * PER_WORKER
    assert min(restarted) > max(together)  # the sequence (above the random bits) goes on
    assert allocate_nonce() not in {*together, *restarted}


@pytest.mark.django_db(transaction=True)
def test_concurrent_authorizations_each_record_a_distinct_nonce(customer, provider, make_booking):
    booking = make_booking(customer, provider)
    signed = _in_threads(4, lambda: [issue_payment_authorization(booking).nonce for _ in range(10)])
    nonces = [n for batch in signed for n in batch]
    assert len(set(nonces)) == 40
    assert sorted(int(n) for n in SignatureNonce.objects.values_list("nonce", flat=True)) == sorted(nonces)


def test_the_nonce_column_is_unique_in_the_database():
    assert SignatureNonce._meta.get_field("nonce").unique


@pytest.mark.chain
@pytest.mark.django_db
def test_after_a_database_restore_a_reissued_sequence_value_is_not_a_nonce_the_contract_has_seen(
    chain_settings, provider, make_booking
):
    """A restore from a backup sets the sequence back: the values handed out since are handed out
    again. The contract keeps every nonce it has seen, so a payment carrying one again would
    revert (NonceAlreadyUsed) until the sequence passed them. Random high bits make each nonce
    new whatever the sequence says."""
    from escrow import signing
    from escrow.signing import sign_payment_authorization

    customer = chain_settings.accounts.customers[0]
    signing._nonce_block.values = []  # a fresh process: the next nonce comes from the sequence
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT last_value, is_called FROM {signing.NONCE_SEQUENCE}")
        backup = cursor.fetchone()
    first = make_booking(customer, provider)
    auth = sign_payment_authorization(first)
    assert chain_settings.pay_booking(auth.message, auth.signature, customer.address)["status"] == 1

    # The restore (the sequence and the rows as they were before), then a process started on it.
    SignatureNonce.objects.filter(booking=first).delete()
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(%s, %s, %s)", [signing.NONCE_SEQUENCE, *backup])
    signing._nonce_block.values = []
    second = make_booking(customer, provider)
    again = sign_payment_authorization(second)
    assert again.nonce >> NONCE_RANDOM_BITS == auth.nonce >> NONCE_RANDOM_BITS  # the same sequence value
    assert again.nonce != auth.nonce
    assert chain_settings.pay_booking(again.message, again.signature, customer.address)["status"] == 1
