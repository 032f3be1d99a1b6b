"""Checks on the paths a command reads and writes, made before anything is written.

Two paths are *the same file* when they resolve to the same real path (``..``, symlinks) or, both
existing, to the same inode (hard links); one lies *inside* another when its real path is below
the other's. Either is a mistake that could make an output replace an input (``predict s.tif
s.tif --overwrite``), or the deletion of an old output take an input with it (``predict
p.zarr/small.tif p.zarr --overwrite``), so it is refused with :class:`~tileseg.errors.ConfigError`
(exit 2) before any work.

The folder an output goes into is checked here too (:func:`check_output_folder`: it exists and
takes files, exit 4), before any work and again by the writer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath, PurePosixPath

from tileseg.errors import ConfigError, OutputError
from tileseg.outputs.store import is_store_url
from tileseg.sources.remote import is_remote

PathLike = str | os.PathLike[str]
NamedPaths = Mapping[str, PathLike | Iterable[PathLike] | None]


def _real(path: PathLike) -> Path:
    # realpath resolves the links of the part that exists and keeps the rest as written
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def object_key(url: str) -> PurePosixPath | None:
    """A store URL (``s3://``, ``gs://``, ``az://`` or GDAL's ``/vsis3/``...) as a relative path
    ``scheme:/bucket/key`` with ``.`` and ``..`` resolved, so two spellings of one object compare
    equal and an object's "folders" are its parents; None for anything else (``https://``)."""
    for vsi, scheme in (("/vsis3/", "s3"), ("/vsigs/", "gs"), ("/vsiaz/", "az")):
        if url.startswith(vsi):
            url = f"{scheme}://{url[len(vsi):]}"
    if not is_store_url(url):
        return None
    scheme, _, rest = url.partition("://")
    parts: list[str] = []
    for part in rest.split("/"):
        if part == "..":
            if len(parts) > 1:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return PurePosixPath(f"{scheme}:", *parts)


def _entries(paths: NamedPaths) -> list[tuple[str, Path | str, PurePath]]:
    out: list[tuple[str, Path | str, PurePath]] = []
    for name, value in paths.items():
        if value is None:
            continue
        items = [value] if isinstance(value, str | os.PathLike) else list(value)
        for item in items:
            if item is None:
                continue
            text = os.fspath(item)
            if is_remote(text):  # objects on a store compare by key; other URLs are not checked
                key = object_key(text)
                if key is not None:
                    out.append((name, text, key))
                continue
            out.append((name, Path(item), _real(item)))
    return out


def check_distinct_paths(paths: NamedPaths, *, read_only: Iterable[str] = ()) -> None:
    """Refuse paths that are the same file or lie one inside another.

    Linear in the number of paths (a batch manifest may list thousands): each path is looked up,
    with its parent folders, among those already seen.

    Parameters
    ----------
    paths
        What each path is (as the user knows it: ``"SRC"``, or the parameter that names it,
        ``"zarr_path"``, which the CLI shows as its flag) mapped to one path, a
        list of paths (a raster and its sidecar files) or None (not used). Object-store URLs
        (``s3://``, ``gs://``, ``az://``, ``/vsis3/``...) are compared by bucket and key: the same
        object twice, or one under another's key as under a folder, is refused as for files;
        other URLs (``https://``) are skipped.
    read_only
        Names that are only read: two of them may overlap (nothing is written there).

    Raises
    ------
    ConfigError
        Naming both paths and the one to change.

    Examples
    --------
    >>> check_distinct_paths({"SRC": "scene.tif", "DST": "scene.tif"})
    Traceback (most recent call last):
    ...
    tileseg.errors.ConfigError: SRC scene.tif and DST scene.tif are the same file; choose another DST
    """
    inputs = set(read_only)
    by_real: dict[PurePath, tuple[str, Path | str]] = {}
    by_inode: dict[tuple[int, int], tuple[str, Path | str]] = {}

    def clash(seen: tuple[str, Path | str], name: str) -> bool:
        return seen[0] != name and not (seen[0] in inputs and name in inputs)

    def refuse(first: tuple[str, Path | str], name: str, path: Path | str,
               relation: str) -> ConfigError:
        change = name if name not in inputs else first[0]
        # names such as zarr_path are parameters (the CLI shows their flags); SRC, DST not
        params = tuple(n for n in dict.fromkeys((first[0], name))
                       if n.isidentifier() and n.islower())
        if relation == "same":
            what = "file" if isinstance(path, Path) else "object"
            return ConfigError(f"{first[0]} {first[1]} and {name} {path} are the same {what}; "
                               f"choose another {change}", params=params)
        inner, outer = (first, (name, path)) if relation == "first inside" else ((name, path), first)
        return ConfigError(f"{inner[0]} {inner[1]} lies inside {outer[0]} {outer[1]}; choose "
                           f"another {change}", params=params)

    entries = _entries(paths)
    for name, path, real in entries:
        seen = by_real.get(real)
        if seen is not None and clash(seen, name):
            raise refuse(seen, name, path, "same")
        try:
            st = os.stat(real) if isinstance(path, Path) else None
        except OSError:
            st = None
        if st is not None:
            seen = by_inode.get((st.st_dev, st.st_ino))
            if seen is not None and clash(seen, name):
                raise refuse(seen, name, path, "same")
        for parent in real.parents:  # this path inside one seen before
            seen = by_real.get(parent)
            if seen is not None and clash(seen, name):
                raise refuse(seen, name, path, "second inside")
        by_real.setdefault(real, (name, path))
        if st is not None:
            by_inode.setdefault((st.st_dev, st.st_ino), (name, path))
    # one seen before inside this path: look every path's parents up among the later ones
    for name, path, real in entries:
        for parent in real.parents:
            seen = by_real.get(parent)
            if seen is not None and clash(seen, name):
                raise refuse((name, path), seen[0], seen[1], "first inside")


def check_output_folder(path: str | os.PathLike[str], what: str = "output", *,
                        params: tuple[str, ...] = ()) -> None:
    """The folder that will hold ``path`` exists and is writable (:class:`OutputError`, exit 4).

    ``what`` names the path in the message (``"zarr_path path"``), ``params`` the parameters
    it names (``("zarr_path",)``), shown as flags by the CLI.
    """
    if is_remote(os.fspath(path)):
        raise OutputError(f"{path}: only s3://, gs:// and az:// outputs are supported; write "
                          "locally and copy", params=params)
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise OutputError(f"{path}: folder {parent} does not exist; create it first or choose "
                          f"another {what}", params=params)
    if not writable_folder(parent):
        raise OutputError(f"{path}: folder {parent} is not writable; choose another {what}",
                          params=params)


def writable_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether files can be made in ``folder``: write and search permission, as the process's
    real user (``os.access``; root too is refused on a read-only file system)."""
    return os.access(folder, os.W_OK | os.X_OK)


def check_folder_creatable(folder: str | os.PathLike[str], what: str, *,
                           params: tuple[str, ...] = ()) -> None:
    """``folder`` is a writable folder, or can be made with its missing parents (``mkdir -p``):
    its nearest existing ancestor is a writable folder (:class:`OutputError`, exit 4)."""
    target = Path(folder).absolute()
    existing = target
    while not (existing.exists() or existing.is_symlink()) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == target else f"lies in {existing}, which is"
        raise OutputError(f"{folder}: {where} not a folder; choose another {what}",
                          params=params)
    if not writable_folder(existing):
        where = "" if existing == target else f" {existing}, where it would be made,"
        raise OutputError(f"{folder}: folder{where} is not writable; choose another {what}",
                          params=params)
