"""Rasters on object storage and web servers, read through GDAL's virtual file systems.

``s3://``, ``gs://``, ``az://`` and ``http(s)://`` paths are opened by rasterio through GDAL's
``/vsis3/``, ``/vsigs/``, ``/vsiaz/`` and ``/vsicurl/``, which read only the byte ranges of the
internal blocks a window needs. Credentials, region and profile come from the usual AWS
variables and files, which GDAL reads itself. What GDAL does not read is the endpoint override
that the AWS SDKs and CLI take from ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for
S3-compatible stores (MinIO, Ceph, a test server): it is translated here into GDAL's own
options, with path-style addressing and ``http://`` endpoints honoured. Options a user set for
GDAL explicitly always win.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

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
    {'GDAL_DISABLE_READDIR_ON_OPEN': 'EMPTY_DIR', 'AWS_S3_ENDPOINT': '127.0.0.1:9000',
     'AWS_HTTPS': 'NO', 'AWS_VIRTUAL_HOSTING': 'FALSE'}
    """
    from tileseg.raster import is_remote

    options: dict[str, str] = {}
    if not is_remote(path):
        return options
    # A COG is one object: listing its "folder" first is a wasted request (and a denied one
    # on buckets that grant GetObject only).
    options["GDAL_DISABLE_READDIR_ON_OPEN"] = "EMPTY_DIR"
    endpoint = s3_endpoint() if is_s3(path) else None
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        # Custom endpoints rarely resolve bucket.host names: path-style, as the SDKs do there.
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return {k: v for k, v in options.items() if k not in os.environ}
