"""Objects on a store (S3 and S3-compatible, GCS, Azure) for outputs, staging and locks.

Built on obstore (the Rust ``object_store`` crate), chosen over fsspec/s3fs because it is one
compact wheel with no aiobotocore stack, zarr v3 ships a store on top of it
(``zarr.storage.ObjectStore``), and it exposes what a safe writer needs: create-only puts
(``If-None-Match: *``) and puts conditional on an ETag (``If-Match``), which make a lock object
possible without a shared file system. ``s3://``, ``gs://`` and ``az://`` URLs take the same
path; credentials come from the usual environment variables and profiles, and
``AWS_ENDPOINT_URL`` selects an S3-compatible endpoint (plain ``http://`` ones included). Every
request is bounded by :class:`tileseg.sources.remote.RequestPolicy` (``$TILESEG_HTTP_TIMEOUT``,
``$TILESEG_HTTP_RETRIES``): a store that accepts connections and never answers fails the
request after the timeout, and its retries stop after a bounded time, not minutes later.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tileseg.errors import DestinationBusyError, OutputError
from tileseg.outputs.liveness import ProcessIdentity, is_gone

logger = logging.getLogger(__name__)

STORE_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "azure://")
DEFAULT_LEASE_S = 60.0


def is_store_url(path: str) -> bool:
    return path.startswith(STORE_SCHEMES)


def _obstore() -> Any:
    from tileseg.deps import require

    return require("obstore", "object storage (pip install 'tileseg[cloud]')")


@dataclass(frozen=True)
class StoreURL:
    """An object URL split into the store's root (scheme + bucket) and the key inside it."""

    url: str
    root: str
    key: str

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        if not is_store_url(url):
            raise OutputError(f"{url}: not an object-store URL (s3://, gs://, az://)")
        scheme, _, rest = url.partition("://")
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise OutputError(f"{url}: no bucket in the URL; use {scheme}://BUCKET/KEY")
        if scheme == "s3":  # every store operation parses first: a bad endpoint stops here
            from tileseg.sources.remote import s3_endpoint

            s3_endpoint()
        return cls(url, f"{scheme}://{bucket}", key.strip("/"))

    def require_key(self, what: str = "destination", *,
                    params: tuple[str, ...] = ()) -> StoreURL:
        """``self`` when it names an object or prefix inside its bucket; :class:`OutputError`
        (exit 4, before any request) for a bucket root, where the lock (``KEY.lock``) and the
        staging prefix (``KEY.partial/``) tileseg writes beside an output have no place."""
        if not self.key:
            raise OutputError(f"{self.url}: is a bucket root, not an object; name a key inside "
                              f"the bucket as the {what} (e.g. {self.root}/mask.tif)",
                              params=params)
        return self

    def child(self, name: str) -> StoreURL:
        key = f"{self.key}/{name}" if self.key else name
        return StoreURL(f"{self.root}/{key}", self.root, key)


_STORES: dict[tuple[Any, ...], Any] = {}
_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                         "AWS_PROFILE")
_STORES_LOCK = threading.Lock()


def open_store(root: str) -> Any:
    """One obstore store per bucket (or prefix URL) and process (they are thread-safe and pool
    connections)."""
    _obstore()
    from obstore.store import from_url

    from tileseg.sources.remote import RequestPolicy, s3_endpoint

    # checked before obstore sees it: a malformed endpoint panics inside it
    endpoint = s3_endpoint() if root.startswith("s3://") else None
    policy = RequestPolicy.from_environment()
    # a store reads its credentials once: changed ones (fixed after a refusal) make another
    key = (root, endpoint, policy, *(os.environ.get(name) for name in _CREDENTIAL_VARIABLES))
    with _STORES_LOCK:
        if key not in _STORES:
            options: dict[str, Any] = _client_options(policy)
            if root.startswith("s3://") and endpoint and endpoint.startswith("http://"):
                options["allow_http"] = True
            _STORES[key] = from_url(root, client_options=options,  # type: ignore[call-overload]
                                    retry_config=_retry_config(policy))
        return _STORES[key]


def _client_options(policy: Any) -> dict[str, Any]:
    """Each request: connected within the timeout, answered and done within it (obstore's own
    default is 30 s for the whole request, which the default timeout keeps)."""
    timeout = timedelta(seconds=policy.timeout_s)
    return {"timeout": timeout, "connect_timeout": timeout}


def _retry_config(policy: Any) -> dict[str, Any]:
    """obstore retries 5xx answers, dropped connections and timed-out reads with backoff: as
    often as the policy says, and never past a few timeouts in all (its own default went on for
    three minutes against a store that never answered)."""
    return {"max_retries": policy.retries,
            "retry_timeout": timedelta(seconds=policy.deadline_s),
            "backoff": {"init_backoff": timedelta(seconds=policy.backoff_s),
                        "max_backoff": timedelta(seconds=policy.max_backoff_s), "base": 2}}


def zarr_store(path: str | os.PathLike[str], *, read_only: bool = False) -> Any:
    """What zarr opens for ``path``: a local path as it is, a store URL as zarr's obstore-backed
    :class:`zarr.storage.ObjectStore` rooted at the URL's key (so array paths stay relative)."""
    text = str(path)
    if not is_store_url(text):
        return text
    from zarr.storage import ObjectStore

    return ObjectStore(open_store(text.rstrip("/")), read_only=read_only)


def any_under(location: StoreURL) -> bool:
    """True when at least one object lies under ``location/``."""
    obstore = _obstore()
    try:
        for batch in obstore.list(open_store(location.root), prefix=location.key + "/",
                                  chunk_size=1):
            if batch:
                return True
    except Exception as exc:
        raise OutputError(_describe_failure(location, exc)) from exc
    return False


def list_names(location: StoreURL) -> list[str]:
    """The names of the objects directly or deeper under ``location/``, relative to it."""
    obstore = _obstore()
    prefix = location.key + "/"
    return [meta["path"][len(prefix):] for batch in obstore.list(open_store(location.root),
                                                                 prefix=prefix)
            for meta in batch]


def delete(location: StoreURL) -> None:
    """Delete one object (nothing happens when it is absent)."""
    obstore = _obstore()
    try:
        obstore.delete(open_store(location.root), location.key)
    except FileNotFoundError:
        pass


def _describe_failure(location: StoreURL, exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "not found" in text.lower() and "bucket" in text.lower():
        return f"{location.url}: the bucket does not exist; create it or fix the URL"
    if "kind: Timeout" in text or "TimedOut" in text:
        from tileseg.sources.remote import within

        return (f"{location.url}: the store did not answer {within()}, on any try; check "
                "AWS_ENDPOINT_URL and the network")
    first = text.split(": <?xml")[0][:200]
    return (f"{location.url}: the store refused or did not answer ({first}); check the URL, "
            "the credentials and AWS_ENDPOINT_URL")


def exists(location: StoreURL) -> bool:
    obstore = _obstore()
    try:
        obstore.head(open_store(location.root), location.key)
    except FileNotFoundError:
        return False
    return True


def read_bytes(location: StoreURL) -> bytes:
    obstore = _obstore()
    return bytes(obstore.get(open_store(location.root), location.key).bytes())


def read_range(location: StoreURL, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of one object, in one request."""
    obstore = _obstore()
    return bytes(obstore.get_range(open_store(location.root), location.key, start=start, end=end))


class RangedObject:
    """A read-only, seekable file over one object that downloads only the byte ranges read.

    Opening it fetches the object's tail (where a zip file keeps its directory) and learns the
    size from the same response; :meth:`fetch` downloads a known span in one request, and a
    read outside what was fetched downloads what it needs (at least ``min_read`` bytes).
    """

    def __init__(self, location: StoreURL, *, tail: int = 1 << 16,
                 min_read: int = 1 << 16) -> None:
        obstore = _obstore()
        self._store = open_store(location.root)
        self._key = location.key
        self._min_read = min_read
        result = obstore.get(self._store, self._key, options={"range": {"suffix": tail}})
        self.size = int(result.meta["size"])
        data = bytes(result.bytes())
        self._segments: list[tuple[int, bytes]] = [(self.size - len(data), data)]
        self._pos = 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = base + offset
        return self._pos

    def fetch(self, start: int, end: int) -> None:
        """Download bytes ``[start, end)`` in one request, unless one segment holds them."""
        end = min(end, self.size)
        if start >= end or any(s <= start and end <= s + len(d) for s, d in self._segments):
            return
        data = bytes(_obstore().get_range(self._store, self._key, start=start, end=end))
        self._segments.append((start, data))

    def read(self, n: int | None = -1) -> bytes:
        left = self.size - self._pos if n is None or n < 0 else min(n, self.size - self._pos)
        out = bytearray()
        while left > 0:
            hit = next(((s, d) for s, d in self._segments if s <= self._pos < s + len(d)), None)
            if hit is None:
                self.fetch(self._pos, self._pos + max(left, self._min_read))
                continue
            start, data = hit
            piece = data[self._pos - start : self._pos - start + left]
            out += piece
            self._pos += len(piece)
            left -= len(piece)
        return bytes(out)


def put_bytes(location: StoreURL, data: bytes, *, create_only: bool = False) -> str | None:
    """Write one object (whole or not at all: a PUT is atomic); returns its ETag."""
    obstore = _obstore()
    try:
        result = obstore.put(open_store(location.root), location.key, data,
                             mode="create" if create_only else "overwrite")
    except FileExistsError:
        raise
    except Exception as exc:
        if type(exc).__name__ == "AlreadyExistsError":
            raise FileExistsError(location.url) from exc
        raise OutputError(_describe_failure(location, exc)) from exc
    return result.get("e_tag") if isinstance(result, dict) else None


def upload_file(local_path: str | os.PathLike[str], location: StoreURL) -> None:
    """Upload a finished local file; the object appears whole (multipart completes last)."""
    obstore = _obstore()
    try:
        with open(local_path, "rb") as handle:
            obstore.put(open_store(location.root), location.key, handle)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not os.path.exists(local_path):
            raise
        raise OutputError(_describe_failure(location, exc)) from exc
    except Exception as exc:
        raise OutputError(_describe_failure(location, exc)) from exc


def delete_prefix(location: StoreURL, *, last: StoreURL | None = None) -> int:
    """Delete every object under ``location/``; returns how many were removed.

    ``last``: one of them deleted only after all the others (a batch delete has no order), so
    a deletion cut short leaves it in place (a run record that proves the rest is tileseg's).
    """
    obstore = _obstore()
    store = open_store(location.root)
    paths = [meta["path"] for batch in obstore.list(store, prefix=location.key + "/")
             for meta in batch]
    final = [p for p in paths if last is not None and p == last.key]
    rest = [p for p in paths if p not in final]
    if rest:
        obstore.delete(store, rest)
    if final:
        obstore.delete(store, final)
    return len(paths)


def check_writable(location: StoreURL) -> None:
    """Fail before any work when the bucket is missing or refuses writes (one probe object)."""
    probe = location.child(f".tileseg-probe-{uuid.uuid4().hex}")
    try:
        put_bytes(probe, b"")
    except OutputError as exc:  # name what the user asked for, not the probe
        raise OutputError(_describe_failure(location, exc.__cause__ or exc)) from None
    _obstore().delete(open_store(probe.root), probe.key)


def check_lock_object(location: StoreURL) -> None:
    """Before any work: :class:`OutputError` (exit 4) when an object sits at the lock key
    ``location`` and tileseg did not write it (taking the lock would otherwise meet it late)."""
    try:
        content = read_bytes(location)
    except FileNotFoundError:
        return
    _lock_record(location, content)


def _lock_record(location: StoreURL, content: bytes) -> dict[str, Any]:
    """The record of the lock object at ``location``; :class:`OutputError` when tileseg did
    not write it (every lock object tileseg writes carries the ``tileseg_lock`` marker)."""
    try:
        record = json.loads(content)
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("tileseg_lock") != 1:
        raise OutputError(f"{location.url}: this object is not a tileseg lock, and a run writing "
                          "beside it needs that key; move the object away or choose another "
                          "destination")
    return record


class StoreLock:
    """One run per destination on a store: a lock object with a lease that the run renews.

    The object is created with a create-only put, so of two runs starting together exactly one
    succeeds. It holds the host, pid, start time and lease expiry, and what proves the holder's
    machine (:class:`tileseg.outputs.liveness.ProcessIdentity`). A run that finds an expired lease (its
    holder was killed, or lost the network), or a live lease whose holder provably no longer
    runs on this same machine (``kill -9``), takes the lock over with a put conditional on the
    stale object's ETag, so two such runs cannot both take it. The holder renews the lease from
    a background thread every third of its length, again conditional on its own ETag: a holder
    that lost the lock to a takeover notices and says so.
    """

    def __init__(self, location: StoreURL, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.location = location
        self.lease_s = lease_s
        self.token = uuid.uuid4().hex
        self._identity = ProcessIdentity.current()
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"tileseg_lock": 1, **self._identity.to_record(),
                           "token": self.token, "started": getattr(self, "_started", now),
                           "lease_expires": now + self.lease_s}).encode()

    def acquire(self) -> None:
        obstore = _obstore()
        store = open_store(self.location.root)
        self._started = time.time()
        for _ in range(3):
            try:
                self._etag = put_bytes(self.location, self._record(), create_only=True)
                break
            except FileExistsError:
                pass
            try:
                self._take_over_if_stale(obstore, store)
                break
            except FileNotFoundError:  # released in between: try to create it again
                continue
        else:
            raise DestinationBusyError(f"{self.location.url}: other tileseg runs keep taking and "
                                       "releasing the lock; try again later")
        self._thread = threading.Thread(target=self._renew, name="tileseg-lease", daemon=True)
        self._thread.start()

    def _take_over_if_stale(self, obstore: Any, store: Any) -> None:
        current = obstore.get(store, self.location.key)
        etag = current.meta.get("e_tag")
        holder = _lock_record(self.location, bytes(current.bytes()))
        who = f"pid {holder.get('pid')} on {holder.get('host')}"
        expires = holder.get("lease_expires")
        left = (expires if isinstance(expires, (int, float)) else 0) - time.time()
        identity = ProcessIdentity.from_record(holder)
        if left > 0 and identity is not None and is_gone(identity):
            # killed on this machine (kill -9, OOM): no need to wait out its lease
            logger.warning("%s: the lock's holder (%s) no longer runs; taking the lock over "
                           "without waiting %.0f s for its lease", self.location.url, who, left)
        elif left > 0:
            raise DestinationBusyError(
                f"{self.location.url}: another tileseg run ({who}) holds the lock; try again "
                f"once it has finished (if it was killed on another machine, its lease runs "
                f"out in {left:.0f} s)")
        else:
            logger.warning("%s: lease of %s expired; taking the lock over", self.location.url,
                           who)
        try:
            result = obstore.put(store, self.location.key, self._record(), mode={"e_tag": etag})
        except Exception as exc:  # another run took it first
            raise DestinationBusyError(f"{self.location.url}: another tileseg run took the "
                                       "stale lock first; try again later") from exc
        self._etag = result.get("e_tag")

    def _renew(self) -> None:
        obstore = _obstore()
        store = open_store(self.location.root)
        while not self._stop.wait(self.lease_s / 3):
            try:
                result = obstore.put(store, self.location.key, self._record(),
                                     mode={"e_tag": self._etag})
                self._etag = result.get("e_tag")
            except Exception as exc:  # noqa: BLE001 - reported, the run decides
                self.lost = True
                logger.error("%s: could not renew the lock's lease (%s); another run may take "
                             "it over", self.location.url, exc)
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._etag is None or self.lost:
            return
        obstore = _obstore()
        store = open_store(self.location.root)
        try:
            current = json.loads(bytes(obstore.get(store, self.location.key).bytes()))
        except (FileNotFoundError, ValueError):
            return
        if current.get("token") == self.token:  # never delete a lock another run took over
            obstore.delete(store, self.location.key)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
