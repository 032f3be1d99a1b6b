"""Rasters on object storage and web servers, read through GDAL's virtual file systems.

``s3://``, ``gs://``, ``az://`` and ``http(s)://`` paths are opened by rasterio through GDAL's
``/vsis3/``, ``/vsigs/``, ``/vsiaz/`` and ``/vsicurl/``, which read only the byte ranges of the
internal blocks a window needs. Credentials, region and profile come from the usual AWS
variables and files, which GDAL reads itself. What GDAL does not read is the endpoint override
that the AWS SDKs and CLI take from ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for
S3-compatible stores (MinIO, Ceph, a test server): it is translated here into GDAL's own
options, with path-style addressing and ``http://`` endpoints honoured. Options a user set for
GDAL explicitly always win.

Every request has a bound (:class:`RequestPolicy`, from ``$TILESEG_HTTP_TIMEOUT`` and
``$TILESEG_HTTP_RETRIES``): one that gets no answer (or no byte) for the timeout is abandoned,
and a failed one is tried again a bounded number of times with exponential backoff. The same
policy governs GDAL's requests for rasters and obstore's for outputs (:mod:`tileseg.outputs.store`).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from tileseg.errors import ConfigError

TIMEOUT_VARIABLE = "TILESEG_HTTP_TIMEOUT"
RETRIES_VARIABLE = "TILESEG_HTTP_RETRIES"


_REMOTE_PREFIXES = ("/vsi", "s3://", "gs://", "az://", "http://", "https://", "zip://", "tar://")


def is_remote(path: str) -> bool:
    return path.startswith(_REMOTE_PREFIXES)


@dataclass(frozen=True)
class RequestPolicy:
    """How long one request may go unanswered, and how often a failed one is tried again.

    ``timeout_s``: seconds without an answer (or, mid-transfer, without a byte) before a request
    is abandoned. ``retries``: further tries after a transient failure (HTTP 5xx or 429, a
    timeout, a dropped connection), waiting ``backoff_s * 2**n`` (at most ``max_backoff_s``,
    with jitter) before the n-th.
    """

    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ConfigError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds, got "
                              f"{self.timeout_s}")
        if self.retries < 0:
            raise ConfigError(f"{RETRIES_VARIABLE} must be 0 or more, got {self.retries}")

    @classmethod
    def from_environment(cls) -> RequestPolicy:
        """The policy ``$TILESEG_HTTP_TIMEOUT`` (seconds, default 30) and
        ``$TILESEG_HTTP_RETRIES`` (default 4) set."""
        values: dict[str, float | int] = {}
        for name, field, kind in ((TIMEOUT_VARIABLE, "timeout_s", float),
                                  (RETRIES_VARIABLE, "retries", int)):
            text = os.environ.get(name, "").strip()
            if not text:
                continue
            try:
                values[field] = kind(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r} is not a number; unset it or give "
                                  f"{'seconds' if kind is float else 'a count'}") from None
        return cls(**values)  # type: ignore[arg-type]

    @property
    def attempts(self) -> int:
        return self.retries + 1

    @property
    def deadline_s(self) -> float:
        """No retry starts later than this after the first try: a store that does not answer
        at all costs a few timeouts, not one per retry."""
        return 2 * self.timeout_s + self.max_backoff_s

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    def tries(self) -> Iterator[int]:
        """Try numbers 1, 2, ...: the backoff is waited before each retry; they end after the
        retries or at the deadline. The caller stops early when a try succeeds."""
        started = time.monotonic()
        for n in range(1, self.attempts + 1):
            if n > 1:
                if time.monotonic() - started >= self.deadline_s:
                    return
                time.sleep(self.backoff(n - 1))
            yield n

    @property
    def whole_s(self) -> int:
        """GDAL takes whole seconds."""
        return max(1, round(self.timeout_s))


# What a failed open says when the store, not the request, was at fault for a while: an HTTP
# status, curl's words for no answer, or (for S3, whose errors GDAL gives as their message only)
# what S3 says with SlowDown, ServiceUnavailable and InternalError.
_TRANSIENT = re.compile(r"HTTP (response )?code:? *(5\d\d|429)|response_code=(5\d\d|429)|"
                        r"timed? ?out|too slow|Timeout|Connection reset|Connection was reset|"
                        r"Recv failure|Send failure|Empty reply|SlowDown|ServiceUnavailable|"
                        r"InternalError|reduce your request rate|internal error|try again|"
                        r"unable to handle", re.IGNORECASE)


def is_transient(message: str) -> bool:
    """True when a failed request's message names a cause that may pass (5xx, 429, timeouts,
    dropped connections), rather than one that will not (404, 403, a wrong endpoint)."""
    return bool(_TRANSIENT.search(message))


# What GDAL says when a read got fewer bytes than it asked for, or no answer: a request that
# failed (GDAL's range reads do not name the HTTP status), unlike a block that fails to decode.
_REQUEST_FAILURE = re.compile(r"Read error|Cannot read|got \d+ bytes|response_code|HTTP|"
                              r"timed? ?out|Timeout|Could not|Couldn't|Connection|Recv failure|"
                              r"Send failure|Empty reply|no answer", re.IGNORECASE)


def readable_failure(message: str) -> str:
    """GDAL's words for a request that got no answer in time, said plainly."""
    if "Operation too slow" in message or "Operation timed out" in message:
        return f"no answer {within()}"
    return message


def within() -> str:
    """How long an unanswered request was waited for, naming the setting."""
    return f"within {RequestPolicy.from_environment().timeout_s:g} s ({TIMEOUT_VARIABLE})"


def is_request_failure(message: str) -> bool:
    """True when a failed read's message says a request failed (short read, HTTP error, no
    answer), not that the bytes it got were damaged."""
    return bool(_REQUEST_FAILURE.search(message))


_VSI_SCHEMES = {"s3://": "/vsis3/", "gs://": "/vsigs/", "az://": "/vsiaz/",
                "http://": "/vsicurl/http://", "https://": "/vsicurl/https://"}
_HTTP_FILESYSTEMS = ("/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/",
                     "/vsicurl/")


def vsi_path(path: str) -> str:
    """GDAL's name for ``path``: ``s3://b/k`` is ``/vsis3/b/k``, ``https://...`` is
    ``/vsicurl/https://...``; other paths as they are."""
    for scheme, prefix in _VSI_SCHEMES.items():
        if path.startswith(scheme):
            return prefix + path[len(scheme):]
    return path


def is_http(path: str) -> bool:
    """True for a raster GDAL reads over HTTP (an object store or a web server)."""
    return vsi_path(path).startswith(_HTTP_FILESYSTEMS)

S3_PREFIXES = ("s3://", "/vsis3/", "/vsis3_streaming/")


def is_s3(path: str) -> bool:
    return path.startswith(S3_PREFIXES)


def s3_endpoint() -> str | None:
    """The S3 endpoint override the AWS SDKs would use, or None for AWS itself.

    Checked before any request (a malformed one would otherwise reach obstore, which panics,
    or GDAL, which fails with a network error): an ``http://`` or ``https://`` URL with a host,
    as the AWS SDKs take it, else :class:`~tileseg.errors.ConfigError` (exit 2) naming the
    variable.

    Examples
    --------
    With ``AWS_ENDPOINT_URL='not a url'`` set:

    >>> s3_endpoint()  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    tileseg.errors.ConfigError: AWS_ENDPOINT_URL 'not a url' is not an http:// or https:// URL ...
    """
    # every one set: obstore reads AWS_ENDPOINT too, and which of them it takes is its business
    for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        value = os.environ.get(variable)
        if value:
            check_endpoint(variable, value)
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def check_endpoint(variable: str, value: str) -> None:
    """``value`` of ``variable`` is an http(s) URL with a host (and a valid port, if any)."""
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number, a bracket left open
        parts, port_ok = None, False
    if (parts is None or not port_ok or parts.scheme not in ("http", "https")
            or not parts.hostname or any(c.isspace() or not c.isprintable() for c in value)):
        from tileseg.errors import ConfigError

        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ConfigError(f"{variable} {shown!r} is not an http:// or https:// URL with a host; "
                          f"set it like http://127.0.0.1:9000 (an S3-compatible store), or unset "
                          f"it for AWS")


def gdal_options(path: str) -> dict[str, str]:
    """GDAL configuration options needed to open ``path`` the way the AWS SDKs would.

    Examples
    --------
    With ``AWS_ENDPOINT_URL=http://127.0.0.1:9000`` set:

    >>> gdal_options("s3://bucket/scene.tif")  # doctest: +SKIP
    {'GDAL_DISABLE_READDIR_ON_OPEN': 'EMPTY_DIR', ..., 'GDAL_HTTP_LOW_SPEED_TIME': '30', ...,
     'AWS_S3_ENDPOINT': '127.0.0.1:9000', 'AWS_HTTPS': 'NO', 'AWS_VIRTUAL_HOSTING': 'FALSE'}
    """
    options: dict[str, str] = {}
    if not is_remote(path):
        return options
    # A COG is one object: listing its "folder" first is a wasted request (and a denied one
    # on buckets that grant GetObject only).
    options["GDAL_DISABLE_READDIR_ON_OPEN"] = "EMPTY_DIR"
    # GDAL fetches the ranges of a multi-threaded read ahead of time, merged, in a thread of its
    # own that reports a failed request only through its error handler, and the read then
    # returns zeros without raising: tileseg.sources.gdal_native counts those reports and
    # tileseg.sources.raster fails (and retries) such a read. Kept on: 3.3x fewer requests and 1.25x
    # the tiles/s of one request per block (benchmarks/bench_remote.py, 20 ms latency).
    # No answer (or no byte, mid-transfer) for the timeout abandons a request; tileseg retries
    # (tileseg.sources.raster), so GDAL's own retries would only multiply the waits.
    policy = RequestPolicy.from_environment()
    options["GDAL_HTTP_CONNECTTIMEOUT"] = str(policy.whole_s)
    options["GDAL_HTTP_LOW_SPEED_TIME"] = str(policy.whole_s)
    options["GDAL_HTTP_LOW_SPEED_LIMIT"] = "1"
    options["GDAL_HTTP_MAX_RETRY"] = "0"
    endpoint = s3_endpoint() if is_s3(path) else None
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        # Custom endpoints rarely resolve bucket.host names: path-style, as the SDKs do there.
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return {k: v for k, v in options.items() if k not in os.environ}
