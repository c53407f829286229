"""The live stream end to end: uvicorn (bookme.asgi) and the relay as real processes, Redis as
the channel layer, PostgreSQL committed by this test (transactional_db), anvil for the reorg."""
from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.utils import timezone

from chain_events import scanner
from escrow.models import Booking, BookingStatus
from escrow.services import create_booking, issue_payment_authorization
from escrow.state import transition
from escrow.wallet_tokens import issue_wallet_token, resolve_wallet_token, revoke_wallet_token
from notifications.models import Notification
from notifications.outbox import visible_to
from tests.escrow.helpers import bind_to_inviter, wallet

from .conftest import HEARTBEAT_SECONDS, StreamClient, StreamServers

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

E, P = BookingStatus.EXPIRED, BookingStatus.PENDING_PAYMENT


def _booking(customer: str, provider: str) -> Booking:
    return create_booking(customer=customer, provider=provider, amount="12.5",
                          scheduled_at=timezone.now() + timedelta(days=2))


def _toggle(booking: Booking) -> str:
    """One status change (PENDING_PAYMENT <-> EXPIRED, as the expiry and a new authorization do)."""
    booking.refresh_from_db()
    target = E if booking.status == P else P
    transition(booking, target, source="api", actor="test")
    return target


def _wait_until_all_numbered(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while Notification.objects.filter(seq__isnull=True).exists():
        assert time.monotonic() < deadline, "the relay left notifications unnumbered"
        time.sleep(0.02)


def _bearer(address: str) -> dict:
    return {"Authorization": f"Bearer {issue_wallet_token(address).token}"}


def test_reconnect_with_last_seq_gets_every_missed_change_once_in_order_then_live(open_stream):
    me, other = wallet("stream-me").address, wallet("stream-other").address
    mine = _booking(me, wallet("stream-provider").address)
    theirs = _booking(other, wallet("stream-provider").address)
    token = issue_wallet_token(me).token
    _wait_until_all_numbered()  # "live from now" starts after the creations' seqs

    client = open_stream({"Authorization": f"Bearer {token}"})
    ready = client.next("ready")
    assert (ready["wallet"], ready["staff"]) == (me, False) and ready["latest_seq"] >= 0
    client.send({"type": "subscribe", "since": None})
    committed_at = time.monotonic()
    _toggle(mine)
    first = client.next("event")
    assert time.monotonic() - committed_at < 1.0  # commit to client within a second
    assert (first["booking"], first["kind"], first["to_status"], first["roles"]) == (
        str(mine.uuid), "booking.expired", E, ["customer"])
    client.close()

    missed = []
    for _ in range(5):  # while away; the other wallet's changes interleave in seq
        missed.append(_toggle(mine))
        _toggle(theirs)

    # Changes keep coming while the client reconnects: the seam between replay and live.
    def more_changes():
        for _ in range(8):
            _toggle(mine)
            _toggle(theirs)
            time.sleep(0.02)

    writer = threading.Thread(target=more_changes)
    writer.start()
    client = open_stream()
    client.send({"type": "auth", "token": token, "since": first["seq"]})
    assert client.next("ready")["wallet"] == me
    frames = []
    writer.join()
    _wait_until_all_numbered()
    expected = list(visible_to(me).filter(seq__gt=first["seq"]).order_by("seq").values_list("seq", "to_status"))
    assert len(expected) == 5 + 8
    while len([f for f in frames if f["type"] == "event"]) < len(expected):
        frame = client.recv()
        if frame["type"] != "heartbeat":
            frames.append(frame)
    events = [f for f in frames if f["type"] == "event"]
    assert [(e["seq"], e["to_status"]) for e in events] == expected  # every one, once, in order
    assert [e["to_status"] for e in events[:5]] == missed
    assert {e["booking"] for e in events} == {str(mine.uuid)}
    replayed = [i for i, f in enumerate(frames) if f["type"] == "replayed"]
    assert len(replayed) == 1  # then the seam: replayed events are <= through, live ones above
    through = frames[replayed[0]]["through"]
    assert all(e["seq"] <= through for e in frames[: replayed[0]])
    assert all(e["seq"] > through for e in frames[replayed[0] + 1:])

    # Live after the replay, within a second, and nothing more before the next heartbeat.
    committed_at = time.monotonic()
    last = _toggle(mine)
    live = client.next("event")
    assert time.monotonic() - committed_at < 1.0
    assert live["to_status"] == last and live["seq"] > events[-1]["seq"]
    client.quiet_until_heartbeat(HEARTBEAT_SECONDS + 2)


def test_three_wallets_see_only_their_bookings_and_a_staff_session_sees_all(open_stream, django_user_model):
    a, b, c = (wallet(f"stream-{x}").address for x in "abc")
    bind_to_inviter(c, b)  # c's bookings carry b as inviter
    booking_a = _booking(a, wallet("stream-pa").address)
    booking_b = _booking(b, a)  # a is its provider
    booking_c = _booking(c, wallet("stream-pc").address)
    staff = get_user_model().objects.create_user("stream-staff", password="x", is_staff=True)
    console = Client()
    console.force_login(staff)
    from django.conf import settings

    cookie = f"{settings.SESSION_COOKIE_NAME}={console.cookies[settings.SESSION_COOKIE_NAME].value}"

    sockets = {name: open_stream(_bearer(address)) for name, address in (("a", a), ("b", b), ("c", c))}
    sockets["staff"] = open_stream({"Cookie": cookie})
    assert sockets["staff"].next("ready")["staff"] is True
    for name in "abc":
        sockets[name].next("ready")
    expected = {
        "a": {(str(booking_a.uuid), ("customer",)), (str(booking_b.uuid), ("provider",))},
        "b": {(str(booking_b.uuid), ("customer",)), (str(booking_c.uuid), ("inviter",))},
        "c": {(str(booking_c.uuid), ("customer",))},
        "staff": {(str(x.uuid), ()) for x in (booking_a, booking_b, booking_c)},
    }
    for name, ws in sockets.items():  # the creations, replayed from the outbox
        ws.send({"type": "subscribe", "since": 0})
        replayed, _through = ws.replay()
        assert {(e["booking"], tuple(e["roles"])) for e in replayed} == expected[name], name
        assert {e["kind"] for e in replayed} == {"booking.created"}
    for booking in (booking_a, booking_b, booking_c):
        _toggle(booking)  # and one live change each
    for name, ws in sockets.items():
        live = ws.events(len(expected[name]))
        assert {(e["booking"], tuple(e["roles"])) for e in live} == expected[name], name
        assert [e["seq"] for e in live] == sorted(e["seq"] for e in live)
        ws.quiet_until_heartbeat(HEARTBEAT_SECONDS + 2)  # nothing else, after an outbox read too

    # Signed out of the console: the staff socket closes at its next heartbeat.
    console.logout()
    frames, code = sockets["staff"].closed_with(timeout=HEARTBEAT_SECONDS + 3)
    assert code == 4401 and frames[-1]["type"] == "error"

    # A session cookie from another site's page (cross-site WebSocket hijacking) is not staff.
    foreign = open_stream({"Cookie": cookie, "Origin": "https://evil.example"})
    frames, code = foreign.closed_with(timeout=5)
    assert code == 4408 and frames[-1]["type"] == "error"


def test_bad_frames_get_error_frames_and_a_revoked_token_closes_4401(open_stream):
    me = wallet("stream-bad").address
    issued = issue_wallet_token(me)
    client = open_stream()
    for frame, field in (
        ("not json", "frame"), ("[1, 2]", "frame"), ({"type": "nope"}, "type"), (b"\x00\x01", "frame"),
        ({"type": "subscribe", "since": 0}, "type"), ({"type": "ping", "pad": "x" * 5000}, "frame"),
    ):
        client.send(frame)
        error = client.recv()
        assert (error["type"], error["field"]) == ("error", field), (frame, error)
        assert error["detail"]
    client.send({"type": "ping"})
    assert client.recv() == {"type": "pong"}

    client.send({"type": "auth", "token": issued.token})
    assert client.next("ready")["wallet"] == me
    for frame, field in (
        ({"type": "auth", "token": issued.token}, "type"), ({"type": "subscribe", "since": "7"}, "since"),
        ({"type": "subscribe", "since": -1}, "since"), ({"type": "subscribe", "since": True}, "since"),
        ({"type": "subscribe"}, "since"),
    ):
        client.send(frame)
        error = client.next("error")
        assert error["field"] == field, (frame, error)
    client.send({"type": "ping"})
    assert client.next("pong") == {"type": "pong"}

    revoke_wallet_token(resolve_wallet_token(issued.token))
    frames, code = client.closed_with(timeout=HEARTBEAT_SECONDS + 3)
    assert code == 4401 and frames[-1]["type"] == "error" and frames[-1]["field"] == "token"

    # Never a token in the URL; a bad token; no auth at all.
    in_url = open_stream(path_suffix=f"?token={issue_wallet_token(me).token}")
    frames, code = in_url.closed_with()
    assert code == 4401 and frames[0]["field"] == "token"
    wrong = open_stream({"Authorization": "Bearer not-a-token"})
    assert wrong.closed_with()[1] == 4401
    silent = open_stream()
    frames, code = silent.closed_with(timeout=5)
    assert code == 4408 and frames[-1]["type"] == "error"


@pytest.mark.chain
def test_a_reorg_that_drops_the_payment_streams_the_move_back_then_the_new_state(open_stream, chain_settings):
    chain = chain_settings
    customer = chain.accounts.customers[2].address
    booking = _booking(customer, wallet("stream-chain-provider").address)
    _wait_until_all_numbered()  # "live from now" starts after the creation's seq
    client = open_stream(_bearer(customer))
    client.next("ready")
    client.send({"type": "subscribe", "since": None})

    def pay() -> str:
        auth = issue_payment_authorization(Booking.objects.get(pk=booking.pk), actor="test")
        return chain.pay_booking(auth.message, auth.signature, customer)["transactionHash"].to_0x_hex()

    def scan():
        assert not scanner.scan_chain(max_seconds=60).skipped

    first_payment = pay()
    scan()
    chain.rpc("anvil_reorg", [1, []])  # the payment's block replaced by an empty one
    scan()
    second_payment = pay()
    scan()
    events = client.events(3)
    assert [(e["from_status"], e["to_status"], e["source"]) for e in events] == [
        (P, BookingStatus.PAID, "chain"), (BookingStatus.PAID, P, "chain"), (P, BookingStatus.PAID, "chain"),
    ]
    assert events[0]["tx_hash"] == first_payment and events[2]["tx_hash"] == second_payment
    assert events[1]["kind"] == "booking.pending_payment"
    assert events[0]["seq"] < events[1]["seq"] < events[2]["seq"]


def _events_then_heartbeat(client, count: int, timeout: float) -> list[dict]:
    """`count` events, each sent by a heartbeat's outbox read: the frame right after it is that
    heartbeat, covering it (a live frame would come at once, not glued to a heartbeat)."""
    events = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        frame = client.recv(max(0.01, deadline - time.monotonic()))
        if frame["type"] == "heartbeat":
            continue
        assert frame["type"] == "event", frame
        after = client.recv(max(0.01, deadline - time.monotonic()))
        assert after["type"] == "heartbeat" and after["latest_seq"] >= frame["seq"], (frame, after)
        events.append(frame)
    return events


def test_live_frames_the_layer_never_delivers_arrive_at_the_next_heartbeats(stream_servers, tmp_path):
    """A second ASGI process on another layer prefix hears nothing the relay publishes (a layer that
    loses every live frame for it): each change still reaches its socket at the next heartbeat,
    once, in order; a heartbeat round that fails (the process's database sessions terminated) is
    logged, and the heartbeats after it go on and bring what it could not."""
    me = wallet("stream-deaf").address
    booking = _booking(me, wallet("stream-deaf-provider").address)
    _wait_until_all_numbered()
    deaf = StreamServers(tmp_path, only=("asgi",), extra_env={"CHANNEL_LAYER_PREFIX": "bookme-stream-test-deaf"},
                         application_name="bookme-stream-test-deaf")
    deaf.start()
    try:
        client = StreamClient(deaf.url, headers=_bearer(me))
        client.next("ready")
        client.send({"type": "subscribe", "since": None})
        events, changes = [], []
        for _ in range(2):  # one change at a time: each comes with a heartbeat of its own
            changes.append(_toggle(booking))
            _wait_until_all_numbered()
            events += _events_then_heartbeat(client, 1, HEARTBEAT_SECONDS + 3)

        with connection.cursor() as cursor:  # the next heartbeat's reads fail
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                           [deaf.application_name])
        changes.append(_toggle(booking))
        _wait_until_all_numbered()
        events += _events_then_heartbeat(client, 1, 2 * HEARTBEAT_SECONDS + 3)
        assert [e["to_status"] for e in events] == changes
        assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})  # in order, once
        client.quiet_until_heartbeat(HEARTBEAT_SECONDS + 3)  # and on they go, with nothing more
        client.close()
    finally:
        codes = deaf.stop()
    logs = deaf.logs()
    assert codes == {"asgi": -signal.SIGTERM}, logs
    assert "stream: heartbeat of" in logs and "Traceback" not in logs, logs
