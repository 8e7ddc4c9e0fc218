"""A fault-injecting HTTP proxy for S3-protocol servers (tests and reliability runs only).

    python -m bench.fault_proxy --target http://127.0.0.1:5000 --port 5100 --rate 0.1

Forwards every request unchanged (the Host header too, so SigV4 signatures stay valid) and, with
probability ``rate``, injects one of the ``--kinds`` instead:

* before forwarding (any request): ``slowdown`` (503 SlowDown), ``internal`` (500), ``drop`` (the
  connection closed without a response);
* in an object's body (GETs only; the object is fetched from the server first): ``reset`` (status
  and the full Content-Length sent, then half the body, then a TCP reset), ``truncate`` (the same,
  closed cleanly: a short body under the right Content-Length), ``stall`` (headers and a part of
  the body, then nothing for ``--stall-seconds``, longer than the client's read timeout), and
  ``burst`` (503 SlowDown for this GET and the next ``--burst-length`` - 1 eligible GETs).

``--only-prefix /bucket/key-prefix`` limits faults to requests whose path starts with it (the
collection's objects, not the table's log). Counts are printed to stderr on exit.
"""

from __future__ import annotations

import argparse
import http.client
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>fault-proxy</RequestId></Error>"
)
FAULTS = ("slowdown", "internal", "drop")
BODY_FAULTS = ("reset", "truncate", "stall", "burst")


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

    def _fail_body(self, fault: str, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        """Send the status and the full Content-Length, then only part of the body."""
        self.send_response(status)
        for key, value in headers:
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        if fault == "stall":
            time.sleep(self.server.stall_seconds)
        elif fault == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _forward(self) -> None:
        body = self._body()
        fault = self.server.draw(self.command, self.path)
        self.server.count(fault or "forwarded")
        if fault in FAULTS:
            self._fail(fault)
            return
        if fault == "burst":
            self._fail("slowdown")
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
        if fault in BODY_FAULTS and resp.status == 200 and len(data) > 1:
            self._fail_body(fault, resp.status, resp.getheaders(), data)
            return
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

    def __init__(self, port: int, target: str, rate: float, seed: int, kinds: tuple[str, ...] = FAULTS,
                 only_prefix: str = "", stall_seconds: float = 5.0, burst_length: int = 3) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        parsed = urlparse(target)
        self.target_host, self.target_port = parsed.hostname or "127.0.0.1", parsed.port or 80
        unknown = set(kinds) - set(FAULTS) - set(BODY_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {FAULTS + BODY_FAULTS}")
        self.rate, self.kinds, self.only_prefix = rate, kinds, only_prefix
        self.stall_seconds, self.burst_length = stall_seconds, burst_length
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._burst_left = 0
        self.counts: Counter[str] = Counter()

    def draw(self, method: str = "GET", path: str = "/") -> str | None:
        """The fault for this request, or None to forward it untouched."""
        if self.only_prefix and not unquote(path).startswith(self.only_prefix):
            return None
        object_get = method == "GET" and "?" not in path
        with self._lock:
            if self._burst_left and object_get:
                self._burst_left -= 1
                return "burst"
            if self._random.random() >= self.rate:
                return None
            allowed = [k for k in self.kinds if k in FAULTS or object_get]
            if not allowed:
                return None
            fault = self._random.choice(allowed)
            if fault == "burst":
                self._burst_left = self.burst_length - 1
            return fault

    def count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="the S3-protocol server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.1, help="share of requests that fail")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(FAULTS), help=f"comma-separated faults from {', '.join(FAULTS + BODY_FAULTS)}")
    parser.add_argument("--only-prefix", default="", help="fault only requests whose path starts with this, e.g. /bucket/in/")
    parser.add_argument("--stall-seconds", type=float, default=5.0, help="how long a stalled body waits")
    parser.add_argument("--burst-length", type=int, default=3, help="GETs answered 503 in a row by one burst")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    proxy = FaultProxy(args.port, args.target, args.rate, args.seed, kinds, args.only_prefix, args.stall_seconds, args.burst_length)

    def stop(*_: object) -> None:
        threading.Thread(target=proxy.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"fault proxy on 127.0.0.1:{args.port} → {args.target}, rate {args.rate}", file=sys.stderr, flush=True)
    proxy.serve_forever()
    print(f"fault proxy counts: {dict(proxy.counts)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
