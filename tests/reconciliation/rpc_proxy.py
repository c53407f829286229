"""A tiny JSON-RPC forwarding proxy in front of anvil that can be told to fail chosen methods.

Used to take the RPC away in the middle of a reconciliation run (e.g. after the state reads,
at the log fetch) and check that nothing was half-applied.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class FailingRpcProxy:
    def __init__(self, target_url: str):
        self.target_url = target_url
        self.failing_methods: set[str] = set()
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                payload = json.loads(body)
                methods = [c["method"] for c in (payload if isinstance(payload, list) else [payload])]
                proxy.seen.extend(methods)
                if proxy.failing_methods.intersection(methods):
                    self.send_response(503)
                    self.end_headers()
                    return
                answer = requests.post(proxy.target_url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
