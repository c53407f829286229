"""The catch-up hot path: the precompiled decoders and JSON template agree with plain eth_abi,
COPY of new event rows falls back to the upsert when some are stored already, and a long
catch-up probes and prefetches ranges."""
from __future__ import annotations

import json
import random

import pytest
from django.utils import timezone
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from chain_events import store
from chain_events.decoding import (
    _LAYOUTS,
    BOOKING_CREATED_AND_PAID,
    SERVICE_COMPLETED,
    LogDecodeError,
    decode_log,
    decode_logs,
)
from chain_events.models import ChainEvent, EventSource
from contracts.artifacts import EVENT_TOPICS

CONTRACT = "0x" + "ab" * 20


def _raw(name: str, data: bytes, index: int = 0) -> dict:
    return {
        "address": CONTRACT,
        "topics": [EVENT_TOPICS[name], "0x" + f"{index + 1:064x}"],
        "data": "0x" + data.hex(),
        "blockNumber": hex(100 + index // 50),
        "blockHash": "0x" + f"{100 + index // 50:064x}",
        "transactionHash": "0x" + f"{10**6 + index:064x}",
        "transactionIndex": hex(index % 50),
        "logIndex": hex(index % 50),
        "removed": False,
    }


def _word(rng: random.Random, kind: str) -> bytes:
    if kind == "address":
        return bytes(12) + rng.randbytes(20)
    return rng.choice([0, 1, 2**64, 2**256 - 1, rng.getrandbits(256)]).to_bytes(32, "big")


@pytest.mark.parametrize("name", [BOOKING_CREATED_AND_PAID, SERVICE_COMPLETED])
def test_log_decoder_matches_plain_eth_abi_value_for_value_and_error_for_error(name):
    layout = _LAYOUTS[EVENT_TOPICS[name].lower()]
    assert layout.json_template is not None  # these layouts store their JSON through the template
    rng = random.Random(4)
    for case in range(300):
        words = [_word(rng, t) for t in layout.types]
        if case % 3 == 1:  # dirty address padding: eth_abi (strict) refuses it
            slot = rng.choice([i for i, t in enumerate(layout.types) if t == "address"])
            words[slot] = rng.randbytes(12) + words[slot][12:]
        data = b"".join(words)
        if case % 10 == 9:
            data = data[:-1]  # truncated
        try:
            expected = abi_decode(list(layout.types), data, strict=True)
        except DecodingError:
            with pytest.raises(LogDecodeError):
                decode_log(_raw(name, data, case), contract_address=CONTRACT)
            continue
        decoded = decode_log(_raw(name, data, case), contract_address=CONTRACT)
        assert list(decoded.args.values()) == [v.lower() if isinstance(v, str) else v for v in expected]
        # The stored JSON is the same text json.dumps made before the template.
        assert json.loads(decoded.args_json()) == {"bookingId": decoded.chain_booking_id} | {
            k: str(v) if isinstance(v, int) else v for k, v in decoded.args.items()
        }
        assert decoded.args_json() == json.dumps(json.loads(decoded.args_json()), separators=(",", ":"))


def test_non_hex_log_data_is_a_decode_error():
    raw = _raw(BOOKING_CREATED_AND_PAID, bytes(192))
    raw["data"] = "0x" + "zz" * 192
    with pytest.raises(LogDecodeError):
        decode_log(raw, contract_address=CONTRACT)


def test_an_undecodable_log_is_skipped_counted_and_the_rest_decoded(caplog):
    from prometheus_client import REGISTRY

    def undecodable() -> float:
        return REGISTRY.get_sample_value("bookme_chain_undecodable_logs_total") or 0.0

    before = undecodable()
    good = _raw(BOOKING_CREATED_AND_PAID, bytes(192), 1)
    truncated = _raw(BOOKING_CREATED_AND_PAID, bytes(191), 2)
    other_contract = {**_raw(BOOKING_CREATED_AND_PAID, bytes(191), 3), "address": "0x" + "cd" * 20}
    decoded = decode_logs([truncated, good, good, other_contract], contract_address=CONTRACT)
    assert [d.key for d in decoded] == [decode_log(good, contract_address=CONTRACT).key]  # once, in order
    assert undecodable() == before + 1  # the other contract's log is not ours, not an error
    assert "undecodable escrow log in tx " + truncated["transactionHash"] in caplog.text


def _payment_logs(count: int, offset: int = 0):
    rng = random.Random(offset)
    layout = _LAYOUTS[EVENT_TOPICS[BOOKING_CREATED_AND_PAID].lower()]
    return [
        decode_log(
            _raw(BOOKING_CREATED_AND_PAID, b"".join(_word(rng, t) for t in layout.types), offset + i),
            contract_address=CONTRACT,
        )
        for i in range(count)
    ]


@pytest.mark.django_db(transaction=True)
def test_copy_insert_stores_new_rows_and_falls_back_to_upsert_when_some_exist():
    now = timezone.now()
    first = _payment_logs(store.COPY_MIN_ROWS)
    inserted = store.insert_events(1, CONTRACT, first, source=EventSource.SCANNER, now=now)
    assert sum(len(ids) for ids in inserted.values()) == len(first)
    rows = {e.id: e for e in ChainEvent.objects.all()}
    assert set(rows) == {i for ids in inserted.values() for i in ids}
    sample = rows[inserted[first[0].chain_booking_id][0]]
    assert (sample.tx_hash, sample.log_index, sample.status, sample.args["amount"]) == (
        first[0].tx_hash, first[0].log_index, "PROCESSED", str(first[0].args["amount"])
    )
    # Half already stored: COPY hits the unique key, the upsert stores only the new half.
    again = first[: len(first) // 2] + _payment_logs(store.COPY_MIN_ROWS, offset=10_000)
    inserted = store.insert_events(1, CONTRACT, again, source=EventSource.SCANNER, now=timezone.now())
    assert sum(len(ids) for ids in inserted.values()) == store.COPY_MIN_ROWS
    assert ChainEvent.objects.count() == 2 * store.COPY_MIN_ROWS
    # A new row gets an id past the ones COPY drew from the sequence (no collision).
    assert ChainEvent.objects.order_by("-id").first().id > max(rows)
