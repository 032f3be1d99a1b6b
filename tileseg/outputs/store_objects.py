"""Single-object outputs on a store: polygon layers, previews, style sidecars, STAC items,
reports, batch summaries (behind :meth:`tileseg.outputs.location.StoreLocation.replacing`).

Each is written whole to a local temporary file and then uploaded in one request, so the object
appears whole or not at all (a store has no rename). What already exists at the destination is
replaced only with ``overwrite`` and only when tileseg wrote it, proved the way it is proved on a
local disk: the object is downloaded to a temporary file of the same name and the same content
check runs on it (the vector marker, the PNG's ``Software`` chunk, the style's comment, the
summary's fields). Object metadata would be cheaper to read but proves nothing: ``aws s3 cp``
drops it, and anyone can set it.

The upload is conditional on what was checked: create-only (``If-None-Match: *``) when the
destination was absent, or on the checked object's ETag (``If-Match``) when replacing it, so an
object someone put there (or changed) between the check and the upload is never replaced; the
run stops with :class:`~tileseg.errors.OutputError` instead. A conditional put is one request,
so the file is read into memory for it; above :data:`CONDITIONAL_PUT_MAX` bytes the upload is a
multipart one (completing last, still all or nothing) right after a second check.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tileseg.errors import ConfigError, InputError, OutputError
from tileseg.outputs.store import (
    StoreURL,
    _describe_failure,
    _obstore,
    any_under,
    check_writable,
    exists,
    is_store_url,
    open_store,
    upload_file,
)

logger = logging.getLogger(__name__)

CONDITIONAL_PUT_MAX = 1 << 30  # bytes: above this, a multipart upload after a second check

OwnedCheck = Callable[[Path], bool]


@dataclass(frozen=True)
class ObjectState:
    """A destination object as it was checked: absent (``etag`` None) or the checked version."""

    url: str
    etag: str | None = None
    present: bool = False


def object_name(url: str) -> str:
    """The object's file name (the last part of its key)."""
    return PurePosixPath(StoreURL.parse(url).key).name or "object"


def check_store_answers(url: str) -> None:
    """A missing bucket, refused credentials or a silent endpoint: exit 2, before any work."""
    try:
        check_writable(StoreURL.parse(url))
    except OutputError as exc:  # the user's setup, not the output
        raise ConfigError(str(exc)) from None


def download(url: str, local: Path) -> str | None:
    """Copy the object at ``url`` to ``local``; its ETag (the version the copy is of)."""
    obstore = _obstore()
    where = StoreURL.parse(url)
    result = obstore.get(open_store(where.root), where.key)
    with open(local, "wb") as handle:
        for part in result:
            handle.write(part)
    return result.meta.get("e_tag")


def inspect_object(url: str, owned: OwnedCheck) -> ObjectState | None:
    """The state of ``url`` when tileseg wrote it (absent counts), None when it did not.

    An object counts as tileseg's when ``owned`` says so of a downloaded copy of it. Objects
    *under* ``url/`` (a "folder") are never tileseg's single-file output.
    """
    where = StoreURL.parse(url)
    if any_under(where):
        return None
    known = _VERIFIED.get((url, owned))
    if known is not None and _etag(where) == known:  # the same bytes, already proved ours
        return ObjectState(url, known, True)
    with tempfile.TemporaryDirectory(prefix="tileseg-check-") as folder:
        local = Path(folder) / object_name(url)
        try:
            etag = download(url, local)
        except FileNotFoundError:
            return ObjectState(url)
        except Exception as exc:
            raise OutputError(_describe_failure(where, exc)) from exc
        if not owned(local):
            return None
        if etag:
            _VERIFIED[(url, owned)] = etag
        return ObjectState(url, etag, True)


# (url, check) -> an ETag whose content that check proved tileseg's: ownership is decided by
# content alone, so the same ETag need not be downloaded again (a run checks its destinations
# before the work, under the lock, and right before the upload).
_VERIFIED: dict[tuple[str, OwnedCheck], str] = {}


def _etag(where: StoreURL) -> str | None:
    try:
        return _obstore().head(open_store(where.root), where.key).get("e_tag")
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise OutputError(_describe_failure(where, exc)) from exc


def check_object_destination(url: str, *, overwrite: bool, owned: OwnedCheck,
                             foreign: str, probe: bool = True,
                             params: tuple[str, ...] = ("overwrite",)) -> ObjectState:
    """Before any work: the store answers (exit 2; ``probe=False`` skips that, for a check
    made again later), and an object at ``url`` is replaced only with ``overwrite`` and only
    when ``owned`` proves tileseg wrote it (exit 4, with the ``foreign`` message naming
    ``params``, otherwise)."""
    where = StoreURL.parse(url).require_key()
    if probe:
        check_store_answers(url)
    if not overwrite and (exists(where) or any_under(where)):
        raise OutputError(f"{url}: already exists; pass overwrite to replace it",
                          params=("overwrite",))
    state = inspect_object(url, owned)
    if state is None:
        raise OutputError(foreign, params=params)
    return state


def upload_checked(local: Path, state: ObjectState, *, owned: OwnedCheck, foreign: str) -> None:
    """Upload ``local`` to ``state.url`` in one go, only over what was checked (see the module
    docstring); a changed destination is :class:`OutputError` and nothing is replaced."""
    where = StoreURL.parse(state.url)
    if os.path.getsize(local) > CONDITIONAL_PUT_MAX:
        again = inspect_object(state.url, owned)
        if again is None:
            raise OutputError(foreign, params=("overwrite",))
        upload_file(local, where)
        return
    obstore = _obstore()
    mode = {"e_tag": state.etag} if state.present and state.etag else "create"
    try:
        result = obstore.put(open_store(where.root), where.key, Path(local),
                             mode=mode,  # type: ignore[arg-type]
                             use_multipart=False)
    except Exception as exc:
        name = type(exc).__name__
        if isinstance(exc, FileExistsError) or name in ("AlreadyExistsError",
                                                         "PreconditionError"):
            raise OutputError(f"{state.url}: changed on the store while tileseg was writing it "
                              "(someone else put an object there); it was left as it is; run "
                              "again to check it") from exc
        raise OutputError(_describe_failure(where, exc)) from exc
    if result.get("e_tag"):  # tileseg's own writer made these bytes
        _VERIFIED[(state.url, owned)] = result["e_tag"]


def read_text_object(url: str, limit: int = 1 << 20) -> str | None:
    """The object's text (UTF-8) when it exists and is at most ``limit`` bytes, else None."""
    obstore = _obstore()
    where = StoreURL.parse(url)
    try:
        meta = obstore.head(open_store(where.root), where.key)
    except FileNotFoundError:
        return None
    if meta["size"] > limit:
        return None
    try:
        data = bytes(obstore.get(open_store(where.root), where.key).bytes())
    except FileNotFoundError:
        return None
    return data.decode("utf-8", "replace")


def version_stamp(url: str) -> str | None:
    """A token that changes when the object (or a Zarr's root ``zarr.json``) is rewritten."""
    if not is_store_url(url):
        return None
    obstore = _obstore()
    where = StoreURL.parse(url.rstrip("/"))
    for candidate in (where, where.child("zarr.json")):
        try:
            meta = obstore.head(open_store(candidate.root), candidate.key)
        except FileNotFoundError:
            continue
        except Exception:  # noqa: BLE001 - a stamp is an optimisation's key, not a check
            return None
        return f"{meta.get('e_tag')}-{meta.get('last_modified')}"
    return None


def is_store_zarr(url: str) -> bool:
    """True when ``url`` is a Zarr group on the store (it has a root ``zarr.json``)."""
    where = StoreURL.parse(url.rstrip("/"))
    try:
        return exists(where.child("zarr.json"))
    except Exception as exc:  # a missing bucket, refused credentials, no answer: the input's
        raise InputError(_describe_failure(where, exc)) from None


def output_exists(url: str) -> bool:
    """An object at ``url`` or objects under ``url/``; a store that fails to answer is
    :class:`OutputError` (one line), never a library traceback."""
    where = StoreURL.parse(url.rstrip("/"))
    try:
        return exists(where) or any_under(where)
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(_describe_failure(where, exc)) from None
