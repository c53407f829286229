"""The primary RPC endpoint of the chaos run: a JSON-RPC proxy in front of anvil that forwards
every call, except while a fault is armed.

Hand-rolled on http.server (as tests/rpc_proxy.py, which the tool may not import): the faults
are about the transport itself (a dropped connection, a hung answer, an HTTP 429), which no
library proxy lets a test switch per request. Faults, each armed for a number of requests or a
number of seconds:
  drop     the connection is closed without an answer
  http500  HTTP 500 with an HTML body
  http429  HTTP 429 Too Many Requests with Retry-After
  garbage  well-formed JSON-RPC whose results are nonsense ("0xdeadbeef")
  timeout  the answer is held for `hang_seconds` (longer than the backend's RPC timeout), then dropped
  outage   every request is dropped: the primary is down (the backend must use its fallback)
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

FAULT_KINDS = ("drop", "http500", "http429", "garbage", "timeout", "outage")


class FaultyRpcProxy:
    def __init__(self, upstream: str, *, hang_seconds: float = 6.0):
        self.upstream = upstream
        self.hang_seconds = hang_seconds
        self.requests = 0
        self.faulted_requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._fault: str | None = None
        self._fault_left = 0  # requests still to fault (0 with _fault_until: by time)
        self._fault_until = 0.0
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real node's load balancer

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 (http.server naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.handle(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultyRpcProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- arming ----------------------------------------------------------------------------
    def arm(self, kind: str, *, requests_count: int = 0, seconds: float = 0.0) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            self._fault = kind
            self._fault_left = requests_count
            self._fault_until = time.monotonic() + seconds if seconds else 0.0

    def disarm(self) -> None:
        with self._lock:
            self._fault, self._fault_left, self._fault_until = None, 0, 0.0

    @property
    def armed(self) -> str | None:
        with self._lock:
            return self._current_locked(consume=False)

    def _current_locked(self, *, consume: bool) -> str | None:
        if self._fault is None:
            return None
        if self._fault_until:
            if time.monotonic() < self._fault_until:
                return self._fault
            self._fault = None
            return None
        if self._fault_left > 0:
            if consume:
                self._fault_left -= 1
            fault = self._fault
            if self._fault_left == 0 and consume:
                self._fault = None
            return fault
        self._fault = None
        return None

    # -- answering -------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        with self._lock:
            self.requests += 1
            fault = self._current_locked(consume=True)
        if fault:
            self.faulted_requests[fault] += 1
        if fault in ("drop", "outage"):
            return self._drop(handler)
        if fault == "timeout":
            time.sleep(self.hang_seconds)
            return self._drop(handler)
        if fault == "http500":
            return self._send(handler, 500, b"<html>500 Internal Server Error</html>", "text/html")
        if fault == "http429":
            return self._send(handler, 429, b'{"error":"too many requests"}', "application/json",
                              {"Retry-After": "1"})
        try:
            request = json.loads(body)
        except ValueError:
            return self._send(handler, 400, b"", "application/json")
        if fault == "garbage":
            items = request if isinstance(request, list) else [request]
            out = [{"jsonrpc": "2.0", "id": item.get("id"), "result": "0xdeadbeef"} for item in items]
            payload = json.dumps(out if isinstance(request, list) else out[0]).encode()
            return self._send(handler, 200, payload, "application/json")
        try:
            answer = self._session().post(self.upstream, data=body, timeout=60,
                                          headers={"Content-Type": "application/json"})
        except requests.RequestException:
            return self._drop(handler)
        self._send(handler, answer.status_code, answer.content, "application/json")

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    @staticmethod
    def _send(handler, status: int, payload: bytes, content_type: str, headers: dict | None = None) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)

    @staticmethod
    def _drop(handler) -> None:
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)
