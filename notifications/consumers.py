"""The live booking stream at /ws/bookings/ (protocol: docs/api.md, "Live status (WebSocket)").

A wallet authenticates with its SIWE bearer token (upgrade header or first frame, never the URL);
a staff console session subscribes to everything. After `subscribe` the socket gets, in seq order,
the outbox's notifications after `since`, then live ones pushed by the relay through the channel
layer. The groups are joined before the outbox is read, and every seq up to `verified_through` has
been read from the outbox, so live frames at or below it (or already sent) are dropped: no gap and
no duplicate at the seam. Each heartbeat re-checks the credentials and reads the outbox again, so a
live frame lost on the way arrives at the next heartbeat at the latest.

Timers (auth timeout, heartbeat) send a message to the socket's own channel instead of acting
themselves: Channels runs a consumer's handlers one at a time, so the state needs no locks.
"""
from __future__ import annotations

import asyncio
import json
from importlib import import_module
from urllib.parse import parse_qs, urlsplit

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from escrow.authentication import is_staff_user
from escrow.wallet_tokens import MAX_TOKEN_LENGTH, resolve_wallet_token

from . import outbox
from .metrics import STREAM_CONNECTIONS, STREAM_EVENTS_SENT

MAX_FRAME_BYTES = 4096
REPLAY_PAGE = 500
CLOSE_UNAUTHORIZED = 4401
CLOSE_AUTH_TIMEOUT = 4408


@database_sync_to_async
def _resolve(token: str):
    record = resolve_wallet_token(token)
    return record.address if record is not None else None


@database_sync_to_async
def _staff_session_still_valid(session_key: str, user_id: int) -> bool:
    """The console session is still signed in as that user (not logged out, not expired, password
    unchanged) and the user is still active staff. Read afresh: scope["session"] is a snapshot."""
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if str(session.get(SESSION_KEY)) != str(user_id):
        return False
    user = get_user_model().objects.filter(pk=user_id, is_active=True, is_staff=True).first()
    return user is not None and constant_time_compare(session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash())


_latest_seq = database_sync_to_async(outbox.latest_seq)
_read_after = database_sync_to_async(outbox.read_after)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _same_origin(scope) -> bool:
    """A session cookie counts only from this site's own pages (or a client without Origin, which
    is not a browser): browsers send cookies on cross-site WebSocket upgrades, CSRF does not apply."""
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == (_header(scope, b"host") or "") or origin in settings.CSRF_TRUSTED_ORIGINS


class StreamError(Exception):
    def __init__(self, field: str, detail: str):
        self.field, self.detail = field, detail
        super().__init__(detail)


def _since(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StreamError("since", "must be a non-negative integer (the last seq you received) or null")
    return value


class BookingStreamConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.wallet: str | None = None
        self.staff_user_id: int | None = None
        self.session_key: str | None = None
        self.token: str | None = None
        self.subscribed = False
        self.verified_through = 0  # every visible seq up to here was read from the outbox and sent
        self.sent_above: set[int] = set()  # seqs sent live above verified_through
        self.groups_joined: list[str] = []
        self.timers: list[asyncio.Task] = []
        await self.accept()
        STREAM_CONNECTIONS.inc()
        if "token" in parse_qs(self.scope.get("query_string", b"").decode("latin-1")):
            await self.refuse("token", "never in the URL: send it in the Authorization header or an auth frame")
            return
        authorization = _header(self.scope, b"authorization")
        user = self.scope.get("user")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                await self.refuse("authorization", "must be 'Bearer <token>'")
                return
            await self.authenticate_wallet(token.strip(), since=None, subscribe=False)
        elif is_staff_user(user) and _same_origin(self.scope):
            self.staff_user_id = user.pk
            self.session_key = self.scope["session"].session_key
            await self.ready()
        else:
            timeout = settings.STREAM_AUTH_TIMEOUT_SECONDS
            self.timers.append(asyncio.create_task(self._after(timeout, "stream.auth_timeout")))

    async def disconnect(self, code):
        STREAM_CONNECTIONS.dec()
        for timer in self.timers:
            timer.cancel()
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    @property
    def authenticated(self) -> bool:
        return self.wallet is not None or self.staff_user_id is not None

    # -- frames from the client ------------------------------------------------------------------
    async def receive(self, text_data=None, bytes_data=None):
        try:
            if text_data is None:
                raise StreamError("frame", "frames are JSON text, not binary")
            if len(text_data.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES:
                raise StreamError("frame", f"larger than {MAX_FRAME_BYTES} bytes")
            try:
                frame = json.loads(text_data)
            except ValueError:
                raise StreamError("frame", "not valid JSON") from None
            if not isinstance(frame, dict):
                raise StreamError("frame", "must be a JSON object")
            kind = frame.get("type")
            if kind == "ping":
                await self.send_json({"type": "pong"})
            elif kind == "auth":
                await self.on_auth(frame)
            elif kind == "subscribe":
                await self.on_subscribe(frame)
            else:
                raise StreamError("type", "must be one of auth, subscribe, ping")
        except StreamError as exc:
            await self.send_json({"type": "error", "field": exc.field, "detail": exc.detail})

    async def on_auth(self, frame):
        if self.authenticated:
            raise StreamError("type", "already authenticated on this socket")
        token = frame.get("token")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            await self.refuse("token", "must be the bearer token from sign-in")
            return
        since = _since(frame.get("since"))
        await self.authenticate_wallet(token, since=since, subscribe="since" in frame)

    async def on_subscribe(self, frame):
        if not self.authenticated:
            raise StreamError("type", "authenticate first")
        if self.subscribed:
            raise StreamError("type", "already subscribed on this socket")
        if "since" not in frame:
            raise StreamError("since", "required: the last seq you received, or null for live changes only")
        await self.subscribe(_since(frame["since"]))

    # -- authentication ---------------------------------------------------------------------------
    async def authenticate_wallet(self, token: str, *, since: int | None, subscribe: bool):
        address = await _resolve(token)
        if address is None:
            await self.refuse("token", "invalid, expired or revoked; sign in again")
            return
        self.wallet, self.token = address, token
        for timer in self.timers:
            timer.cancel()
        self.timers = []
        await self.ready()
        if subscribe:
            await self.subscribe(since)

    async def ready(self):
        self.timers.append(asyncio.create_task(self._heartbeats()))
        await self.send_json(
            {"type": "ready", "wallet": self.wallet, "staff": self.wallet is None, "latest_seq": await _latest_seq()}
        )

    async def refuse(self, field: str, detail: str):
        await self.send_json({"type": "error", "field": field, "detail": detail})
        await self.close(code=CLOSE_UNAUTHORIZED)

    async def still_authorized(self) -> bool:
        if self.wallet is not None:
            return await _resolve(self.token) == self.wallet
        return await _staff_session_still_valid(self.session_key, self.staff_user_id)

    # -- the stream ------------------------------------------------------------------------------
    async def subscribe(self, since: int | None):
        group = outbox.STAFF_GROUP if self.wallet is None else outbox.wallet_group(self.wallet)
        await self.channel_layer.group_add(group, self.channel_name)  # before reading: nothing falls between
        self.groups_joined.append(group)
        self.subscribed = True
        if since is None:
            self.verified_through = await _latest_seq()
            return
        self.verified_through = since
        await self.catch_up()
        await self.send_json({"type": "replayed", "through": self.verified_through})

    async def catch_up(self):
        """Send what the outbox holds for this socket above verified_through and was not sent live."""
        while True:
            rows, through = await _read_after(self.wallet, self.verified_through, REPLAY_PAGE)
            for row in rows:
                if row.seq not in self.sent_above:
                    await self.send_event(outbox.event_fields(row), outbox.parties(row), path="outbox")
            self.verified_through = through
            self.sent_above = {seq for seq in self.sent_above if seq > through}
            if len(rows) < REPLAY_PAGE:
                return

    async def send_event(self, fields: dict, party_addresses: dict, *, path: str):
        await self.send_json({**fields, "roles": outbox.roles_of(self.wallet, party_addresses)})
        STREAM_EVENTS_SENT.labels(path).inc()

    # -- messages on this socket's channel -----------------------------------------------------------
    async def outbox_event(self, message):
        """A notification the relay published to one of this socket's groups."""
        seq = message["event"]["seq"]
        if not self.subscribed or seq <= self.verified_through or seq in self.sent_above:
            return
        self.sent_above.add(seq)
        await self.send_event(message["event"], message["parties"], path="live")

    async def stream_heartbeat(self, message):
        if not await self.still_authorized():
            await self.refuse("token", "expired or revoked; sign in again")
            return
        if self.subscribed:
            await self.catch_up()
            latest = self.verified_through
        else:
            latest = await _latest_seq()
        await self.send_json({"type": "heartbeat", "latest_seq": latest, "at": timezone.now().isoformat()})

    async def stream_auth_timeout(self, message):
        if not self.authenticated:
            await self.send_json(
                {"type": "error", "field": "token",
                 "detail": f"no auth frame within {settings.STREAM_AUTH_TIMEOUT_SECONDS} s"}
            )
            await self.close(code=CLOSE_AUTH_TIMEOUT)

    async def send_json(self, content):
        await self.send(text_data=json.dumps(content))

    async def _after(self, seconds: float, message_type: str):
        await asyncio.sleep(seconds)
        await self.channel_layer.send(self.channel_name, {"type": message_type})

    async def _heartbeats(self):
        while True:
            await asyncio.sleep(settings.STREAM_HEARTBEAT_SECONDS)
            await self.channel_layer.send(self.channel_name, {"type": "stream.heartbeat"})
