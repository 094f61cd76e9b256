"""A small HTTP proxy that injects faults between workers and an S3 endpoint.

    with FaultProxy(moto_endpoint) as proxy:        # workers: AWS_ENDPOINT_URL=proxy.url
        proxy.set(fail=0.2, stall=0.05)              # 20 % answer 503, 5 % hang, the rest pass
        proxy.set(delay=0.02)                        # or: 20 ms more on every request
        ...
        proxy.counts                                 # {"forwarded": n, "failed": n, "stalled": n}
        proxy.requests                               # [(method, path), ...] every request seen

A failed request is answered ``503 SlowDown`` (S3's own throttling reply) without reaching
the endpoint; a stalled one is held for ``stall_s`` seconds (longer than the client's read
timeout) and then dropped, also without reaching the endpoint. Everything else is forwarded
unchanged (path-style S3 over plain HTTP, as boto3 speaks to MinIO or moto). The draw is
seeded, so a run's fault rate is stable; which request gets which fault depends on timing.
"""
from __future__ import annotations

import http.client
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
       "upgrade", "proxy-authenticate", "proxy-authorization"}
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops the SYNs of a 32-connection client (1 s)

    def handle_error(self, request, client_address):  # a client that hung up: not news
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FaultProxy:
    def __init__(self, upstream: str, *, fail: float = 0.0, stall: float = 0.0,
                 stall_s: float = 3.0, seed: int = 0, delay: float = 0.0):
        u = urlparse(upstream)
        self.upstream = (u.hostname, u.port or 80)
        self.fail, self.stall, self.stall_s, self.delay = fail, stall, stall_s, delay
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts = {"forwarded": 0, "failed": 0, "stalled": 0}
        self.requests: list[tuple[str, str]] = []
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="fault-proxy")

    # --- control ---------------------------------------------------------------------
    def set(self, fail: float = 0.0, stall: float = 0.0, delay: float = 0.0) -> None:
        """Fault rates, and ``delay`` seconds of latency added to every forwarded request."""
        with self._lock:
            self.fail, self.stall, self.delay = fail, stall, delay

    def reset_counts(self) -> None:
        with self._lock:
            self.counts = dict.fromkeys(self.counts, 0)
            self.requests = []

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _draw(self, method: str, path: str) -> str:
        with self._lock:
            self.requests.append((method, path))
            x = self._rng.random()
            fate = "failed" if x < self.fail else "stalled" if x < self.fail + self.stall \
                else "forwarded"
            self.counts[fate] += 1
            return fate

    # --- the handler ---------------------------------------------------------------------
    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: with Nagle's algorithm the body waits
            # for the client's delayed ACK of the headers (40 ms on Linux) on every reply
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _serve(self):
                body = self._body()
                fate = proxy._draw(self.command, self.path)
                if fate == "failed":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                if fate == "stalled":
                    time.sleep(proxy.stall_s)
                    self.close_connection = True
                    return
                if proxy.delay:
                    time.sleep(proxy.delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    headers["Content-Length"] = str(len(body))
                conn = getattr(self, "_upstream", None)  # one per client connection, kept
                if conn is None:
                    conn = self._upstream = http.client.HTTPConnection(*proxy.upstream,
                                                                       timeout=60)
                try:
                    try:
                        conn.request(self.command, self.path, body=body or None,
                                     headers=headers)
                        r = conn.getresponse()
                    except (http.client.RemoteDisconnected, ConnectionError):
                        conn.close()  # the endpoint closed the kept connection: once more
                        conn.request(self.command, self.path, body=body or None,
                                     headers=headers)
                        r = conn.getresponse()
                    data = r.read()
                    self.send_response(r.status, r.reason)
                    for k, v in r.getheaders():
                        if k.lower() not in HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", r.getheader("Content-Length") or "0")
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except BaseException:
                    conn.close()
                    raise

            def finish(self):
                super().finish()
                if getattr(self, "_upstream", None) is not None:
                    self._upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve

        return Handler
