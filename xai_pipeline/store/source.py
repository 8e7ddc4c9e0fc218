"""Where figures come from: URIs, listing (with sizes and ETags), and reading object bytes.

Inputs are ``s3://bucket/prefix`` (AWS or any S3-compatible store through ``endpoint_url``) or a
local folder. Credentials and region come from the standard AWS settings (environment, profile,
instance role), never from flags, so they cannot leak into logs or the table.

The driver lists every object (:mod:`xai_pipeline.job.listing`), and a fetch stage reads each listed
object by key with boto3, which, unlike
pyarrow's S3 filesystem, can address keys with ``.``, ``..`` or empty path segments. An object
that is gone or forbidden when read becomes a row (``missing`` / ``read_error``); transient
faults are retried and, if they persist, fail the task so Ray retries it — they never become rows.
URIs are normalised in one place: ``s3://bucket/key`` and ``file:///absolute/path``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
from xai_pipeline.errors import SourceError

log = logging.getLogger(__name__)



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


def s3_client(settings: S3Settings, max_attempts: int = 10, read_timeout: float = 60.0) -> Any:
    """A boto3 S3 client with standard retries of the request (throttling, 5xx, dropped
    connections), one per process, setting and timeout. Created under a lock from this process's
    own boto3 session: creating clients from the default session in several threads at once is
    not thread-safe (boto3 documents it); a created client is."""
    key = (os.getpid(), settings.resolved_endpoint, settings.resolved_region, max_attempts, float(read_timeout))
    with _CLIENT_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            session = _SESSIONS.get(os.getpid())
            if session is None:
                session = _SESSIONS[os.getpid()] = boto3.session.Session()
            config = Config(retries={"max_attempts": max_attempts, "mode": "standard"}, connect_timeout=10,
                            read_timeout=read_timeout, max_pool_connections=32)
            client = _CLIENTS[key] = session.client("s3", endpoint_url=key[1], region_name=key[2], config=config)
    return client


_CLIENT_LOCK = threading.Lock()
_CLIENTS: dict[tuple[Any, ...], Any] = {}
_SESSIONS: dict[int, Any] = {}


def check_output(location: Location, flag: str = "--output") -> None:
    """Fail fast on a local output that cannot be a table folder."""
    if location.scheme == "file":
        path = Path(location.path)
        if path.exists() and not path.is_dir():
            raise SourceError(f"{flag} {location.uri}: exists and is not a folder")


def preflight_s3(location: Location, settings: S3Settings, flag: str) -> None:
    """Check before any work that a bucket is reachable with the current credentials.

    Raises :class:`SourceError` with the fix: a missing bucket, an endpoint that does not answer,
    missing or rejected credentials. Never includes credential values in the message.
    """
    if location.scheme != "s3":
        return
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    endpoint = settings.resolved_endpoint
    where = f"endpoint {endpoint}" if endpoint else "AWS S3"
    bucket = location.bucket
    try:
        s3_client(settings, max_attempts=5).head_bucket(Bucket=bucket)
    except NoCredentialsError as exc:
        raise SourceError(
            f"{flag} {location.uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run with an instance role"
        ) from exc
    except EndpointConnectionError as exc:
        raise SourceError(
            f"{flag} {location.uri}: cannot connect to {where}; check --endpoint-url / AWS_ENDPOINT_URL and that the server is up"
        ) from exc
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise SourceError(f"{flag} {location.uri}: bucket '{bucket}' does not exist on {where}; create it or fix the URI") from exc
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken") or status == 403:
            raise SourceError(
                f"{flag} {location.uri}: {where} rejected the credentials for bucket '{bucket}' ({code or status}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the bucket policy"
            ) from exc
        raise SourceError(f"{flag} {location.uri}: {where} answered {code or status} for bucket '{bucket}'") from exc
    except ValueError as exc:  # botocore rejects malformed endpoint URLs with ValueError
        raise SourceError(f"{flag} {location.uri}: bad endpoint {endpoint!r}: {exc}") from exc
