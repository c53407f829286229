"""The live booking stream at /ws/bookings/ (protocol: docs/api.md, "Live status (WebSocket)").

A wallet authenticates with its SIWE bearer token (upgrade header or first frame, never the URL);
a staff console session subscribes to everything. After `subscribe` the socket gets, in seq order,
the outbox's notifications after `since`, then live ones pushed by the relay through the channel
layer. The groups are joined before the outbox is read, and every seq up to `verified_through` has
been read from the outbox, so live frames at or below it (or already sent) are dropped: no gap and
no duplicate at the seam. Each heartbeat re-checks the credentials and reads the outbox again, so a
live frame lost on the way (the pub/sub layer delivers at most once: whatever is published while
this process's subscription is down is gone) arrives at the next heartbeat at the latest:
`bookme_stream_events_sent_total{path="recovered"}` counts the frames a heartbeat sent (lost live,
or read from the outbox before their live frame came).

The timers (auth timeout, heartbeat) do their work in their own task, not through the channel
layer: a heartbeat that has to travel through the layer is lost with it when the layer is full or
away, which is exactly when it is needed. Every handler holds `self.lock` while it runs
(`dispatch` below), and a timer while it sends or moves the seam state (a heartbeat reads the
outbox without it, see `heartbeat`), so the state is touched by one of them at a time. A timer
survives any error of one round (logged); `disconnect` survives a layer that refuses
`group_discard`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
from importlib import import_module
from urllib.parse import parse_qs, urlsplit

from channels.consumer import get_handler_name
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

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 4096
REPLAY_PAGE = 500
CLOSE_UNAUTHORIZED = 4401
CLOSE_AUTH_TIMEOUT = 4408


def _wallet_of(token: str) -> str | None:
    record = resolve_wallet_token(token)
    return record.address if record is not None else None


def _staff_session_still_valid(session_key: str, user_id: int) -> bool:
    """The console session is still signed in as that user (not logged out, not expired, password
    unchanged) and the user is still active staff. Read afresh: scope["session"] is a snapshot."""
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if str(session.get(SESSION_KEY)) != str(user_id):
        return False
    user = get_user_model().objects.filter(pk=user_id, is_active=True, is_staff=True).first()
    return user is not None and constant_time_compare(session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash())


def _heartbeat_reads(wallet: str | None, token: str | None, session_key: str | None, staff_user_id: int | None,
                     after: int | None) -> tuple[bool, list, int]:
    """A heartbeat's database work in one go: (credentials still valid, the socket's outbox rows
    after `after` (a page), the seq they are complete through; `after` None: none, the newest seq)."""
    if wallet is not None:
        authorized = _wallet_of(token) == wallet
    else:
        authorized = _staff_session_still_valid(session_key, staff_user_id)
    if not authorized:
        return False, [], 0
    if after is None:
        return True, [], outbox.latest_seq()
    rows, through = outbox.read_after(wallet, after, REPLAY_PAGE)
    return True, rows, through


_resolve = database_sync_to_async(_wallet_of)
_latest_seq = database_sync_to_async(outbox.latest_seq)
_read_after = database_sync_to_async(outbox.read_after)
# Not thread-sensitive: every socket's heartbeat reads (1,000 sockets: ~70 a second) would queue
# on the one thread that Channels' database_sync_to_async uses by default, each holding its
# socket meanwhile; on the default executor's threads (a connection each) they run side by side.
_heartbeat_reads_async = database_sync_to_async(_heartbeat_reads, thread_sensitive=False)


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
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = asyncio.Lock()  # one handler or timer at a time (see the module's docstring)

    async def dispatch(self, message):
        """Channels' dispatch under `self.lock`, without its close_old_connections before every
        handler: that is one hop into the single database thread per live frame, queued behind
        every socket's heartbeat reads; the handlers here reach the database only through
        database_sync_to_async, which closes old connections itself."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        async with self.lock:
            await handler(message)

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
            self.timers.append(asyncio.create_task(self._auth_timeout()))

    async def disconnect(self, code):
        STREAM_CONNECTIONS.dec()
        for timer in self.timers:
            timer.cancel()
        for group in self.groups_joined:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # the socket is gone either way; nothing to retry
                log.warning("stream: group_discard(%s) failed on disconnect: %r", group, exc)

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
            await self.send_unsent(rows, through, path="outbox")
            if len(rows) < REPLAY_PAGE:
                return

    async def send_unsent(self, rows, through: int, *, path: str):
        """Send `rows` (read from the outbox after some seq, complete through `through`) that were
        neither sent live nor are at or below verified_through, and move verified_through to
        `through`. `path`: the metric's label ("outbox" when subscribing, "recovered" at a heartbeat)."""
        for row in rows:
            if row.seq > self.verified_through and row.seq not in self.sent_above:
                await self.send_event(outbox.event_fields(row), outbox.parties(row), path=path)
        self.verified_through = max(self.verified_through, through)
        self.sent_above = {seq for seq in self.sent_above if seq > self.verified_through}

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

    async def heartbeat(self) -> bool:
        """One heartbeat; False when it closed the socket (credentials no longer valid). The reads
        run without the lock, so live frames keep flowing meanwhile: what they send in between is
        in sent_above or at most verified_through, and send_unsent skips it."""
        while True:
            reading_outbox = self.subscribed
            authorized, rows, through = await _heartbeat_reads_async(
                self.wallet, self.token, self.session_key, self.staff_user_id,
                self.verified_through if reading_outbox else None,
            )
            async with self.lock:
                if not authorized:
                    await self.refuse("token", "expired or revoked; sign in again")
                    return False
                if reading_outbox:
                    await self.send_unsent(rows, through, path="recovered")
                    if len(rows) == REPLAY_PAGE:
                        continue  # more to read
                # After subscribing, the seq the socket has everything through (it may have
                # subscribed while this read ran); before, the outbox's newest.
                latest = self.verified_through if self.subscribed else through
                await self.send_json({"type": "heartbeat", "latest_seq": latest, "at": timezone.now().isoformat()})
                return True

    async def send_json(self, content):
        await self.send(text_data=json.dumps(content))

    # -- timers (tasks of their own) ---------------------------------------------------------------
    async def _auth_timeout(self):
        await asyncio.sleep(settings.STREAM_AUTH_TIMEOUT_SECONDS)
        try:
            async with self.lock:
                if not self.authenticated:
                    await self.send_json(
                        {"type": "error", "field": "token",
                         "detail": f"no auth frame within {settings.STREAM_AUTH_TIMEOUT_SECONDS} s"}
                    )
                    await self.close(code=CLOSE_AUTH_TIMEOUT)
        except Exception as exc:  # the client went away meanwhile: nothing left to close
            log.warning("stream: auth timeout of %s failed: %r", self.channel_name, exc)

    async def _heartbeats(self):
        period = settings.STREAM_HEARTBEAT_SECONDS
        # The first one at a random point of the period: sockets that connected together (a
        # restart reconnects them all) do not read the outbox together ever after.
        await asyncio.sleep(period * random.uniform(0.25, 1.0))
        while True:
            try:
                if not await self.heartbeat():
                    return
            except Exception as exc:  # the next round tries again: it is what heals a lost frame
                log.warning("stream: heartbeat of %s failed: %r", self.channel_name, exc)
            await asyncio.sleep(period)
