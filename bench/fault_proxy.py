"""A fault-injecting HTTP proxy for S3-protocol servers (tests and reliability runs only).

    python -m bench.fault_proxy --target http://127.0.0.1:5000 --port 5100 --rate 0.1

Forwards every request unchanged (the Host header too, so SigV4 signatures stay valid) and, with
probability ``rate``, answers instead with one of: ``503 SlowDown``, ``500 InternalError``, or a
dropped connection (closed without a response). Faults are drawn before the request is forwarded,
so a failed request never reaches the server. Counts are printed to stderr on exit.
"""

from __future__ import annotations

import argparse
import http.client
import random
import signal
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>fault-proxy</RequestId></Error>"
)
FAULTS = ("slowdown", "internal", "drop")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "FaultProxy"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _fail(self, fault: str) -> None:
        if fault == "drop":
            self.close_connection = True
            self.connection.close()
            return
        code, status, message = (
            ("SlowDown", 503, "Please reduce your request rate.") if fault == "slowdown" else ("InternalError", 500, "We encountered an internal error.")
        )
        body = _ERROR_BODY.format(code=code, message=message).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        body = self._body()
        fault = self.server.draw()
        self.server.count(fault or "forwarded")
        if fault:
            self._fail(fault)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.server.target_host, self.server.target_port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        # A HEAD response has no body but announces the object's length: pass that through.
        length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


class FaultProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, target: str, rate: float, seed: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        parsed = urlparse(target)
        self.target_host, self.target_port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.rate = rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def draw(self) -> str | None:
        with self._lock:
            if self._random.random() < self.rate:
                return self._random.choice(FAULTS)
            return None

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="the S3-protocol server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.1, help="share of requests that fail")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.port, args.target, args.rate, args.seed)

    def stop(*_: object) -> None:
        threading.Thread(target=proxy.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"fault proxy on 127.0.0.1:{args.port} → {args.target}, rate {args.rate}", file=sys.stderr, flush=True)
    proxy.serve_forever()
    print(f"fault proxy counts: {dict(proxy.counts)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
