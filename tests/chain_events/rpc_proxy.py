"""A tiny local JSON-RPC endpoint for failure tests: answers garbage, or forwards to anvil
while refusing wide eth_getLogs ranges the way hosted providers do."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class RpcProxy:
    def __init__(self, upstream: str | None = None, *, mode: str = "garbage", max_log_blocks: int = 3):
        self.upstream = upstream
        self.mode = mode
        self.max_log_blocks = max_log_blocks
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.requests += 1
                payload = proxy.answer(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
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

    def answer(self, body: bytes) -> bytes:
        if self.mode == "not-json":
            return b"<html>502 upstream hiccup</html>"
        request = json.loads(body)
        items = request if isinstance(request, list) else [request]
        if self.mode == "garbage":
            # Well-formed JSON-RPC whose results are nonsense (a broken load balancer).
            out = [{"jsonrpc": "2.0", "id": item["id"], "result": "0xdeadbeef"} for item in items]
        else:  # "range-limit": forward, but refuse eth_getLogs wider than max_log_blocks
            out = []
            for item in items:
                if item["method"] == "eth_getLogs":
                    params = item["params"][0]
                    start, end = int(params["fromBlock"], 16), int(params["toBlock"], 16)
                    if end - start + 1 > self.max_log_blocks:
                        out.append({"jsonrpc": "2.0", "id": item["id"], "error": {
                            "code": -32602,
                            "message": "query returned more than 10000 results. Try with this block range "
                                       f"[{hex(start)}, {hex(start + self.max_log_blocks - 1)}].",
                        }})
                        continue
                out.append(requests.post(self.upstream, json=item, timeout=10).json())
        return json.dumps(out if isinstance(request, list) else out[0]).encode()
