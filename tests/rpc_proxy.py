"""A tiny local JSON-RPC endpoint for failure tests, in front of (or instead of) anvil.

Modes: "garbage" answers well-formed JSON-RPC with nonsense results (a broken load balancer);
"not-json" answers an HTML error page; "forward" passes every call to the upstream node,
except that eth_getLogs wider than `max_log_blocks` is refused the way hosted providers do
(with a suggested range) and any method in `failing_methods` gets an HTTP 503 (the node
going away in the middle of a run). `seen` lists the methods asked, `requests` counts posts,
`answer_sizes` the body size of each answer that held eth_getLogs results. With
`declare_length=False` answers carry no Content-Length (the body ends when the connection
closes), as a streaming node may send them. `lag_blocks` makes the node look that many blocks
behind: "latest" is an older header and blocks above it do not exist (a lagging backend).
A method in `lose_answer_once` is forwarded the first time it is asked, and that answer is lost
(HTTP 502 to the client: a gateway timing out after the node acted). With `empty_logs` every
eth_getLogs is answered with no logs (a node that has not indexed the blocks yet).
`refuse_methods` maps a method to the JSON-RPC error message the node answers it with, and
`nonsense_answers` maps a method to the result the node answers it with instead of the real one.
"""
from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class RpcProxy:
    def __init__(
        self,
        upstream: str | None = None,
        *,
        mode: str = "forward",
        max_log_blocks: int | None = None,
        declare_length: bool = True,
    ):
        self.upstream = upstream
        self.mode = mode
        self.max_log_blocks = max_log_blocks
        self.declare_length = declare_length
        self.answer_sizes: list[int] = []
        self.failing_methods: set[str] = set()
        self.lag_blocks = 0
        self.lose_answer_once: set[str] = set()
        self.empty_logs = False
        self.refuse_methods: dict[str, str] = {}
        self.nonsense_answers: dict[str, object] = {}
        self.seen: list[str] = []
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 (http.server naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.requests += 1
                status, payload = proxy.answer(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if proxy.declare_length:
                    self.send_header("Content-Length", str(len(payload)))
                else:
                    self.close_connection = True  # HTTP/1.0: the body ends with the connection
                self.end_headers()
                # The client may stop reading (an answer over its size limit).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def answer(self, body: bytes) -> tuple[int, bytes]:
        if self.mode == "not-json":
            return 200, b"<html>502 upstream hiccup</html>"
        request = json.loads(body)
        items = request if isinstance(request, list) else [request]
        self.seen.extend(item["method"] for item in items)
        if self.mode == "garbage":
            out = [{"jsonrpc": "2.0", "id": item["id"], "result": "0xdeadbeef"} for item in items]
            return 200, json.dumps(out if isinstance(request, list) else out[0]).encode()
        if self.failing_methods.intersection(item["method"] for item in items):
            return 503, b""
        lost = self.lose_answer_once.intersection(item["method"] for item in items)
        if lost:
            self.lose_answer_once -= lost
            for item in items:
                requests.post(self.upstream, json=item, timeout=30)
            return 502, b""
        out = []
        for item in items:
            if item["method"] == "eth_getLogs" and self.max_log_blocks is not None:
                params = item["params"][0]
                start, end = int(params["fromBlock"], 16), int(params["toBlock"], 16)
                if end - start + 1 > self.max_log_blocks:
                    out.append({"jsonrpc": "2.0", "id": item["id"], "error": {
                        "code": -32602,
                        "message": "query returned more than 10000 results. Try with this block range "
                                   f"[{hex(start)}, {hex(start + self.max_log_blocks - 1)}].",
                    }})
                    continue
            if item["method"] in self.refuse_methods:
                out.append({"jsonrpc": "2.0", "id": item["id"],
                            "error": {"code": -32000, "message": self.refuse_methods[item["method"]]}})
                continue
            if item["method"] in self.nonsense_answers:
                out.append({"jsonrpc": "2.0", "id": item["id"], "result": self.nonsense_answers[item["method"]]})
                continue
            if self.empty_logs and item["method"] == "eth_getLogs":
                out.append({"jsonrpc": "2.0", "id": item["id"], "result": []})
                continue
            if self.lag_blocks and item["method"] == "eth_getBlockByNumber":
                out.append(self._lagging_block(item))
                continue
            out.append(requests.post(self.upstream, json=item, timeout=30).json())
        payload = json.dumps(out if isinstance(request, list) else out[0]).encode()
        if "eth_getLogs" in (item["method"] for item in items):
            self.answer_sizes.append(len(payload))
        return 200, payload

    def _lagging_block(self, item: dict) -> dict:
        head = int(requests.post(self.upstream, json={"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber",
                                                      "params": []}, timeout=30).json()["result"], 16)
        visible = max(0, head - self.lag_blocks)
        tag, full = item["params"]
        number = visible if tag in ("latest", "safe", "finalized", "pending") else min(int(tag, 16), visible + 1)
        if number > visible:
            return {"jsonrpc": "2.0", "id": item["id"], "result": None}
        forwarded = {**item, "params": [hex(number), full]}
        return requests.post(self.upstream, json=forwarded, timeout=30).json()
