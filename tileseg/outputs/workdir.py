"""The work directory of a run: what each chunk task saved, so a resume or a retried task
redoes nothing that is done.

Per chunk: its *piece* (the inferred interior, and the spill summed over its neighbours'
areas, by neighbour) and, once the chunk is in the Zarr, its *done* record (tile counts, the
runtime that inferred it); and, once per run, the runtime label the first task recorded.
:class:`LocalWorkDir` keeps them as files (atomic: a temporary name, a rename);
:class:`StoreWorkDir` as objects under a prefix (a PUT appears whole or not at all), with
byte ranges so a neighbour downloads only its part of a piece. :func:`open_work_dir` picks one
from the location; the tasks (:mod:`tileseg.inference.mosaic`) call the :class:`WorkDir`
methods and never ask which.
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tileseg.errors import RunError
from tileseg.outputs.diskspace import atomic_file
from tileseg.outputs.store import (
    RangedObject,
    StoreURL,
    delete,
    exists,
    is_store_url,
    list_names,
    put_bytes,
    read_bytes,
    read_range,
)


class WorkDir(Protocol):
    """What a chunk task saves and reads back (see the module docstring)."""

    @property
    def location(self) -> str:
        """Where every worker finds this work directory."""

    def create(self) -> None: ...

    def has_piece(self, row: int, col: int) -> bool: ...

    def is_done(self, row: int, col: int) -> bool: ...

    def save_piece(self, row: int, col: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Save a chunk's piece; returns what a neighbour needs to read its part (spans)."""

    def load_piece(self, row: int, col: int) -> Any: ...

    def load_spill(self, row: int, col: int, key: str,
                   span: dict[str, Any] | None = None) -> Any: ...

    def remove_piece(self, row: int, col: int) -> None: ...

    def mark_done(self, row: int, col: int, info: dict[str, Any]) -> None: ...

    def read_done(self, row: int, col: int) -> dict[str, Any]: ...

    def done_chunks(self) -> set[tuple[int, int]]: ...

    def piece_chunks(self) -> set[tuple[int, int]]: ...

    def claim_runtime(self, label: str) -> str: ...


class LocalWorkDir:
    """The work directory of a run on a local (or shared) disk: one file per record, each
    written by :func:`~tileseg.outputs.diskspace.atomic_file` (a temporary name, a rename)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.pieces = self.path / "pieces"
        self.done = self.path / "done"

    @property
    def location(self) -> str:
        """Where every worker finds this work directory."""
        return str(self.path.absolute())

    def create(self) -> None:
        self.pieces.mkdir(parents=True, exist_ok=True)
        self.done.mkdir(parents=True, exist_ok=True)

    def piece_path(self, row: int, col: int) -> Path:
        return self.pieces / f"r{row}_c{col}.npz"

    def done_path(self, row: int, col: int) -> Path:
        return self.done / f"r{row}_c{col}"

    def has_piece(self, row: int, col: int) -> bool:
        return self.piece_path(row, col).exists()

    def is_done(self, row: int, col: int) -> bool:
        return self.done_path(row, col).exists()

    def save_piece(self, row: int, col: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Save the piece; no spans (a neighbour's np.load reads only the members it uses)."""
        with atomic_file(self.piece_path(row, col), folder=self.path, resumable=True) as tmp:
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
        return {}

    def load_piece(self, row: int, col: int) -> Any:
        path = self.piece_path(row, col)
        try:
            return np.load(path)
        except FileNotFoundError:
            raise RunError(f"{path}: missing intermediate chunk file; rerun with resume",
                           params=("resume",)) from None

    def load_spill(self, row: int, col: int, key: str, span: dict[str, Any] | None = None) -> Any:
        """The piece's arrays for one neighbour (``key_*``); np.load reads members lazily."""
        return self.load_piece(row, col)

    def remove_piece(self, row: int, col: int) -> None:
        self.piece_path(row, col).unlink(missing_ok=True)

    def mark_done(self, row: int, col: int, info: dict[str, Any]) -> None:
        with atomic_file(self.done_path(row, col), folder=self.path, resumable=True) as tmp:
            tmp.write_text(json.dumps(info))

    def read_done(self, row: int, col: int) -> dict[str, Any]:
        return dict(json.loads(self.done_path(row, col).read_text()))

    def done_chunks(self) -> set[tuple[int, int]]:
        """Every chunk marked done, in one directory listing."""
        return _parse_done(p.name for p in self.done.iterdir()) if self.done.is_dir() else set()

    def piece_chunks(self) -> set[tuple[int, int]]:
        """Every chunk whose piece is saved (its tiles are inferred), in one listing."""
        return (_parse_done(p.name.removesuffix(".npz") for p in self.pieces.iterdir())
                if self.pieces.is_dir() else set())

    def claim_runtime(self, label: str) -> str:
        """The run's runtime (:meth:`Runtime.label`): ``label`` if no chunk has recorded one
        yet (then recorded, by whichever task gets there first), else the recorded one."""
        record = self.path / "runtime"
        tmp = record.with_name(f"runtime.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(label)
        try:
            os.link(tmp, record)  # fails if there is one: the first task's label stays
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return record.read_text()


def _parse_done(names: Any) -> set[tuple[int, int]]:
    done = set()
    for name in names:
        row, _, col = name.partition("_c")
        if row.startswith("r") and row[1:].isdigit() and col.isdigit():
            done.add((int(row[1:]), int(col)))
    return done


class StoreWorkDir:
    """The records of :class:`LocalWorkDir` as objects under a store prefix, so workers that share
    no disk share the run. A PUT is atomic (an object appears whole or not at all), which is
    what the local temporary-name-and-rename gives; a done marker is written last."""

    def __init__(self, url: str) -> None:
        self.root = StoreURL.parse(url)

    @property
    def location(self) -> str:
        return self.root.url

    def create(self) -> None:
        """Nothing to do: a prefix exists as soon as an object is written under it."""

    def _piece(self, row: int, col: int) -> Any:
        return self.root.child(f"pieces/r{row}_c{col}.npz")

    def _done(self, row: int, col: int) -> Any:
        return self.root.child(f"done/r{row}_c{col}")

    def has_piece(self, row: int, col: int) -> bool:
        return exists(self._piece(row, col))

    def is_done(self, row: int, col: int) -> bool:
        return exists(self._done(row, col))

    def save_piece(self, row: int, col: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Upload the piece in one PUT; returns where each neighbour's arrays lie in it."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        data = buffer.getvalue()
        put_bytes(self._piece(row, col), data)
        return spill_spans(data)

    def load_piece(self, row: int, col: int) -> Any:
        where = self._piece(row, col)
        try:
            return np.load(io.BytesIO(read_bytes(where)))
        except FileNotFoundError:
            raise RunError(f"{where.url}: missing intermediate chunk object; rerun with "
                           "resume", params=("resume",)) from None

    def load_spill(self, row: int, col: int, key: str, span: dict[str, Any] | None = None) -> Any:
        """The piece's arrays for one neighbour (``key_*``) without downloading the rest: one
        ranged request where the inferring task said they lie (``span``, see
        :func:`spill_spans`); without it (a piece saved by an earlier run), the object's tail
        (its zip directory) first, then one ranged request per run of those arrays."""
        import zipfile

        where = self._piece(row, col)
        try:
            if span is not None:
                start, end = span["range"]
                data = read_range(where, start, end)
                return _Arrays({name: np.load(io.BytesIO(data[off : off + size]))
                                for name, (off, size) in span["members"].items()})
            view = RangedObject(where)
            with zipfile.ZipFile(view) as archive:  # type: ignore[arg-type]
                members = sorted(archive.infolist(), key=lambda info: info.header_offset)
                ends = [m.header_offset for m in members[1:]] + [archive.start_dir]
            run_start: int | None = None
            for member, end in zip(members, ends, strict=True):
                if member.filename.startswith(key + "_"):
                    run_start = member.header_offset if run_start is None else run_start
                    run_end = end
                elif run_start is not None:
                    view.fetch(run_start, run_end)
                    run_start = None
            if run_start is not None:
                view.fetch(run_start, run_end)
            return np.lib.npyio.NpzFile(view)  # type: ignore[arg-type]
        except FileNotFoundError:
            raise RunError(f"{where.url}: missing intermediate chunk object; rerun with "
                           "resume", params=("resume",)) from None

    def remove_piece(self, row: int, col: int) -> None:
        delete(self._piece(row, col))

    def mark_done(self, row: int, col: int, info: dict[str, Any]) -> None:
        put_bytes(self._done(row, col), json.dumps(info).encode())

    def read_done(self, row: int, col: int) -> dict[str, Any]:
        return dict(json.loads(read_bytes(self._done(row, col))))

    def done_chunks(self) -> set[tuple[int, int]]:
        """Every chunk marked done, in one listing (instead of a HEAD request per chunk)."""
        return _parse_done(list_names(self.root.child("done")))

    def piece_chunks(self) -> set[tuple[int, int]]:
        """Every chunk whose piece is saved, in one listing."""
        return _parse_done(n.removesuffix(".npz") for n in list_names(self.root.child("pieces")))

    def claim_runtime(self, label: str) -> str:
        """:meth:`LocalWorkDir.claim_runtime` with a conditional PUT (create only)."""
        record = self.root.child("runtime")
        try:
            put_bytes(record, label.encode(), create_only=True)
            return label
        except FileExistsError:
            return read_bytes(record).decode()


def open_work_dir(location: str | os.PathLike[str]) -> WorkDir:
    """The work directory at ``location``: a store URL gives a :class:`StoreWorkDir`."""
    text = str(location)
    return StoreWorkDir(text) if is_store_url(text) else LocalWorkDir(text)


def spill_spans(npz: bytes) -> dict[str, Any]:
    """Where each neighbour's spill arrays lie in a saved piece (the bytes of an uncompressed
    ``np.savez``): for every ``to_rR_cC`` key, the byte range holding all its members, and each
    member's ``.npy`` bytes as (offset in that range, length). A neighbour then downloads one
    range instead of the whole piece."""
    import struct
    import zipfile

    with zipfile.ZipFile(io.BytesIO(npz)) as archive:
        members = sorted(archive.infolist(), key=lambda info: info.header_offset)
    spans: dict[str, Any] = {}
    for member in members:
        key, sep, _ = member.filename.rpartition("_")
        if not (sep and key.startswith("to_r")):
            continue
        at = member.header_offset
        name_len, extra_len = struct.unpack_from("<HH", npz, at + 26)  # the local header's own
        data_at = at + 30 + name_len + extra_len
        end = data_at + member.compress_size
        span = spans.setdefault(key, {"range": [at, end], "members": {}})
        span["range"] = [min(span["range"][0], at), max(span["range"][1], end)]
        span["members"][member.filename.removesuffix(".npy")] = [data_at, member.compress_size]
    for span in spans.values():  # offsets relative to the range's start
        start = span["range"][0]
        span["members"] = {k: [off - start, size] for k, (off, size) in span["members"].items()}
    return spans


class _Arrays(dict[str, np.ndarray]):
    """Arrays by name with the ``files`` list of ``np.load``'s NpzFile, which callers use."""

    @property
    def files(self) -> list[str]:
        return list(self)

    def __enter__(self) -> _Arrays:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


