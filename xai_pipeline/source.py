"""Where figures come from: URI parsing, the pyarrow filesystem, listing, and URI normalisation.

Inputs are ``s3://bucket/prefix`` (AWS or any S3-compatible store through ``endpoint_url``) or a
local folder. Credentials and region come from the standard AWS settings (environment, profile,
instance role), never from flags, so they cannot leak into logs or the table.

Objects are listed here rather than by Ray: Ray's directory expansion silently skips names that
start with ``.`` or ``_``, and every object must yield a row. URIs are normalised in one place:
``s3://bucket/key`` and ``file:///absolute/path``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


class SourceError(ValueError):
    """A configuration problem with an input or output location."""


@dataclass(frozen=True)
class Location:
    """A parsed location: ``scheme`` is ``"s3"`` or ``"file"``; ``path`` is what pyarrow takes
    (``bucket/key`` for S3, an absolute path for local files)."""

    scheme: str
    path: str

    @property
    def uri(self) -> str:
        return f"s3://{self.path}" if self.scheme == "s3" else f"file://{self.path}"

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0] if self.scheme == "s3" else ""

    def to_uri(self, path: str) -> str:
        """Normalise a pyarrow/Ray path under this location's filesystem to a URI."""
        return f"s3://{path.lstrip('/')}" if self.scheme == "s3" else f"file://{path}"


def parse_location(uri: str, flag: str) -> Location:
    """Parse ``s3://bucket/prefix``, ``file:///path`` or a plain local path.

    Args:
        uri: the location given by the user.
        flag: the CLI flag it came from, named in errors (e.g. ``"--input"``).
    """
    if not uri:
        raise SourceError(f"{flag} is required")
    scheme, sep, rest = uri.partition("://")
    if sep and scheme.lower() in ("s3", "s3a"):
        # Split by hand: keys may hold '?', '#' or '%', which urlparse would interpret.
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise SourceError(f"{flag} {uri!r}: an S3 URI needs a bucket, e.g. s3://bucket/prefix")
        return Location("s3", f"{bucket}/{key}".rstrip("/"))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Location("file", os.path.abspath(uri[len("file://") :]))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise SourceError(f"{flag} {uri!r}: unsupported scheme {parsed.scheme!r}; use s3:// or a local path")
    return Location("file", os.path.abspath(os.path.expanduser(uri)))


@dataclass(frozen=True)
class S3Settings:
    """Connection settings that are not secrets. ``endpoint_url`` for S3-compatible stores."""

    endpoint_url: str | None = None
    region: str | None = None

    @property
    def resolved_region(self) -> str | None:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")

    @property
    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")


def make_filesystem(location: Location, settings: S3Settings = S3Settings()) -> pafs.FileSystem:
    """The pyarrow filesystem for a location, with retries for transient S3 errors."""
    if location.scheme == "file":
        return pafs.LocalFileSystem()
    endpoint = settings.resolved_endpoint
    kwargs: dict[str, object] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=10),
        "connect_timeout": 10,
        "request_timeout": 60,
    }
    if settings.resolved_region:
        kwargs["region"] = settings.resolved_region
    if endpoint:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise SourceError(f"--endpoint-url {endpoint!r}: expected http(s)://host[:port]")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


def list_files(location: Location, fs: pafs.FileSystem, flag: str = "--input") -> list[tuple[str, int]]:
    """Every object under a location as ``(path, size)``, sorted; a single file lists itself.

    Raises :class:`SourceError` naming ``flag`` when the location does not exist or holds nothing.
    """
    try:
        info = fs.get_file_info(location.path)
        if info.type == pafs.FileType.File:
            return [(info.path, int(info.size or 0))]
        if info.type == pafs.FileType.NotFound and location.scheme == "file":
            raise SourceError(f"{flag} {location.uri}: no such file or folder")
        selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
        files = [(f.path, int(f.size or 0)) for f in fs.get_file_info(selector) if f.type == pafs.FileType.File]
    except OSError as exc:
        raise SourceError(f"{flag} {location.uri}: cannot list objects ({exc})") from exc
    if not files:
        raise SourceError(f"{flag} {location.uri}: no objects found")
    files.sort()
    return files


def check_output(location: Location, flag: str = "--output") -> None:
    """Fail fast on a local output that cannot be a table folder."""
    if location.scheme == "file":
        path = Path(location.path)
        if path.exists() and not path.is_dir():
            raise SourceError(f"{flag} {location.uri}: exists and is not a folder")
