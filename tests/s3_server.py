"""A real S3 API server on loopback for tests and benchmarks, with a counting, delaying,
fault-injecting proxy.

moto's server speaks the S3 REST API over real HTTP, so GDAL's ``/vsis3/``, boto3 and zarr all
talk to it as they would to a store. The proxy in front of it counts requests and the bytes of
each response body (what a reader really fetched) and can delay every response, to show how
reads behave with network latency. It can also misbehave as stores do under load or when they
break (:class:`Faults`): answer an error status instead of forwarding, accept a request and never
answer, or run a callback (replace an object) before the n-th request. Both listen on 127.0.0.1
only and stop when asked.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "tileseg-test",
    "AWS_SECRET_ACCESS_KEY": "tileseg-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@dataclass
class Traffic:
    """What went through the proxy: requests by method, body bytes sent back (``bytes_out``) and
    body bytes received (``bytes_in``: what clients uploaded), in all and per bucket
    (``per_bucket``), and every request's method and path (``log``). How much requests
    overlapped: ``peak_in_flight`` and :attr:`overlap` (request-seconds per busy second)."""

    requests: dict[str, int] = field(default_factory=dict)
    bytes_out: int = 0
    bytes_in: int = 0
    per_bucket: dict[str, Traffic] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    # body bytes sent back and GET requests, per object path (/bucket/key, no query string)
    per_object: dict[str, int] = field(default_factory=dict)
    gets_per_object: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0
    request_s: float = 0.0  # summed over requests, from arrival to answer
    busy_s: float = 0.0  # wall time with at least one request in flight
    _busy_since: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> float:
        now = time.perf_counter()
        with self.lock:
            if self.in_flight == 0:
                self._busy_since = now
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return now

    def leave(self, entered: float) -> None:
        now = time.perf_counter()
        with self.lock:
            self.in_flight -= 1
            self.request_s += now - entered
            if self.in_flight == 0:
                self.busy_s += now - self._busy_since

    @property
    def overlap(self) -> float:
        """Requests in flight on average while any is: 1.0 means one after another."""
        return self.request_s / self.busy_s if self.busy_s else 0.0

    def add(self, method: str, nbytes: int, nbytes_in: int = 0, path: str = "") -> None:
        bucket = path.lstrip("/").split("/")[0].split("?")[0]
        key = path.split("?", 1)[0]
        with self.lock:
            self._count(method, nbytes, nbytes_in)
            self.per_bucket.setdefault(bucket, Traffic())._count(method, nbytes, nbytes_in)
            self.log.append((method, path))
            if method == "GET":
                self.per_object[key] = self.per_object.get(key, 0) + nbytes
                self.gets_per_object[key] = self.gets_per_object.get(key, 0) + 1

    def _count(self, method: str, nbytes: int, nbytes_in: int) -> None:
        self.requests[method] = self.requests.get(method, 0) + 1
        self.bytes_out += nbytes
        self.bytes_in += nbytes_in

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_out = 0
            self.bytes_in = 0
            self.per_bucket.clear()
            self.log.clear()
            self.per_object.clear()
            self.gets_per_object.clear()
            self.peak_in_flight = self.in_flight
            self.request_s = self.busy_s = 0.0
            self._busy_since = time.perf_counter()

    def bucket(self, name: str) -> Traffic:
        """The traffic to one bucket (empty when none went there)."""
        with self.lock:
            return self.per_bucket.get(name, Traffic())

    @property
    def gets(self) -> int:
        return self.requests.get("GET", 0)


@dataclass
class _Rule:
    action: str  # "status", "hang" or "call"
    path: str
    methods: tuple[str, ...]
    after: int
    times: int | None
    status: int = 503
    callback: Any = None
    seen: int = 0
    fired: int = 0


class Faults:
    """What the proxy does instead of forwarding, by rule; every rule counts the requests whose
    path contains its ``path`` (and whose method is one of ``methods``, when given), lets the
    first ``after`` through, then acts on the next ``times`` (None: on every one after).

    ``fail(503)`` answers an S3 error document with that status, ``hang()`` reads the request and
    never answers (until :meth:`clear` or the server stops), ``before(callback)`` runs
    ``callback()`` and then forwards (to replace an object while a run reads it). ``hits`` counts
    the requests that met a fault. The first rule that acts on a request wins.
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.hits = 0

    def fail(self, status: int = 503, *, path: str = "", methods: tuple[str, ...] = (),
             after: int = 0, times: int | None = None) -> None:
        self._add(_Rule("status", path, methods, after, times, status=status))

    def hang(self, *, path: str = "", methods: tuple[str, ...] = (), after: int = 0,
             times: int | None = None) -> None:
        self._add(_Rule("hang", path, methods, after, times))

    def before(self, callback: Any, *, path: str = "", methods: tuple[str, ...] = (),
               after: int = 0) -> None:
        self._add(_Rule("call", path, methods, after, 1, callback=callback))

    def clear(self) -> None:
        """Forward everything again; hung requests are let go (their connections closed)."""
        with self._lock:
            self._rules.clear()
            self.hits = 0
            self._release.set()
            self._release = threading.Event()

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def decide(self, method: str, path: str) -> tuple[_Rule | None, threading.Event]:
        with self._lock:
            for rule in self._rules:
                if rule.path not in path or (rule.methods and method not in rule.methods):
                    continue
                rule.seen += 1
                if rule.seen <= rule.after or (rule.times is not None
                                               and rule.fired >= rule.times):
                    continue
                rule.fired += 1
                if rule.action != "call":
                    self.hits += 1
                return rule, self._release
        return None, self._release


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], delay_s: float) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.delay_s = delay_s
        self.traffic = Traffic()
        self.faults = Faults()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client killed mid-request (the kill -9 tests) resets its connection: not an error
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def _forward(self) -> None:
        entered = self.server.traffic.enter()
        try:
            self._relay()
        finally:
            self.server.traffic.leave(entered)

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        rule, release = self.server.faults.decide(self.command, self.path)
        if rule is not None and rule.action == "call":
            rule.callback()
        elif rule is not None and rule.action == "hang":
            release.wait()  # no answer at all, until the test lets go or the server stops
            self.close_connection = True
            return
        elif rule is not None:
            self._refuse(rule.status)
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        self.server.traffic.add(self.command, len(payload), len(body or b""), self.path)
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        # a HEAD answer has no body but states the object's length, which readers need
        length = response.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _refuse(self, status: int) -> None:
        """An S3 error answer, as a busy or failing store gives (SlowDown, InternalError)."""
        code, words = {
            503: ("SlowDown", "Please reduce your request rate."),
            500: ("InternalError", "We encountered an internal error. Please try again."),
        }.get(status, ("ServiceUnavailable", "Service is unable to handle request."))
        payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                   f"<Message>{words}</Message></Error>").encode()
        self.server.traffic.add(self.command, 0, 0, self.path)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@dataclass
class S3Server:
    """A running moto server and proxy: ``endpoint`` is what clients should use."""

    endpoint: str
    traffic: Traffic
    env: dict[str, str]
    faults: Faults = field(default_factory=Faults)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])


@contextmanager
def running_s3(delay_s: float = 0.0) -> Iterator[S3Server]:
    """Start moto's S3 server and the proxy on loopback; stop both on exit."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        port = moto._server.server_port  # port 0: the OS picked a free one
        proxy = _Proxy(("127.0.0.1", port), delay_s)
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        try:
            endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
            yield S3Server(endpoint, proxy.traffic, dict(CREDENTIALS, AWS_ENDPOINT_URL=endpoint),
                           proxy.faults)
        finally:
            proxy.faults.clear()  # hung requests end, so the proxy's threads do
            proxy.shutdown()
            proxy.server_close()
    finally:
        moto.stop()


@contextmanager
def s3_environment(server: S3Server) -> Iterator[None]:
    """The AWS variables that point SDKs and GDAL at ``server``, restored afterwards."""
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def s3_with_buckets(*buckets: str) -> Iterator[S3Server]:
    """A running server, this process's environment pointed at it, and ``buckets`` created."""
    with running_s3() as server, s3_environment(server):
        for bucket in buckets:
            server.client().create_bucket(Bucket=bucket)
        yield server


@contextmanager
def checking_credentials() -> Iterator[dict[str, str]]:
    """While inside, the server checks every request's signature against an IAM user, as a real
    store does (moto accepts any key otherwise); yields that user's good credentials, allowed
    every S3 action. Outside, any key is accepted again."""
    import json
    import uuid

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.authorization import enable_iam_authentication
    from moto.iam.models import iam_backends

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["global"]
    name = f"tileseg-{uuid.uuid4().hex[:8]}"  # moto's IAM state outlives one server
    iam.create_user("us-east-1", name)
    key = iam.create_access_key(name)
    iam.put_user_policy(name, "s3", json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    with enable_iam_authentication():
        yield {"AWS_ACCESS_KEY_ID": key.access_key_id,
               "AWS_SECRET_ACCESS_KEY": key.secret_access_key}
