"""Where figures come from: URIs, listing (with sizes and ETags), and reading object bytes.

Inputs are ``s3://bucket/prefix`` (AWS or any S3-compatible store through ``endpoint_url``) or a
local folder. Credentials and region come from the standard AWS settings (environment, profile,
instance role), never from flags, so they cannot leak into logs or the table.

The driver lists every object (:mod:`xai_pipeline.listing`), and a fetch stage reads each listed
object by key with boto3, which, unlike
pyarrow's S3 filesystem, can address keys with ``.``, ``..`` or empty path segments. An object
that is gone or forbidden when read becomes a row (``missing`` / ``read_error``); transient
faults are retried and, if they persist, fail the task so Ray retries it — they never become rows.
URIs are normalised in one place: ``s3://bucket/key`` and ``file:///absolute/path``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow.fs as pafs

from xai_pipeline import faults, schema
from xai_pipeline.schema import Status

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ReadPolicy:
    """How hard one object's read is tried before it becomes a ``read_error`` row.

    ``retries``: further attempts after the first (``--read-retries``); ``timeout``: seconds a
    socket read may wait for data (``--read-timeout``), so a stalled body is cut and read again;
    ``deadline``: seconds for all attempts together (``--read-deadline``). Attempt ``k`` waits a
    random time in ``[0, min(cap, base · 2^k)]`` first (exponential backoff with full jitter).
    """

    retries: int = 5
    timeout: float = 60.0
    deadline: float = 300.0
    backoff_base: float = 0.2
    backoff_cap: float = 10.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.timeout <= 0 or self.deadline <= 0:
            raise ValueError("read retries must be >= 0, timeout and deadline positive")

    def backoff(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2 ** attempt))


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


@dataclass(frozen=True)
class Fetched:
    data: bytes
    status: str = ""  # "" when read; else a Status value
    error: str = ""
    etag: str | None = None  # the ETag of the bytes read, when the store said (normalised)


# Error codes that describe the object or the request, not a passing fault: never retried.
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_REFUSED_CODES = frozenset({"AccessDenied", "403", "InvalidObjectState", "AllAccessDisabled", "InvalidRequest", "400"})
_CHANGED_CODES = frozenset({"PreconditionFailed", "412"})


def _read_local(path: str) -> Fetched:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Fetched(b"", Status.MISSING.value, "listed but no longer there when read")
    except OSError as exc:  # permission, EIO, ELOOP, a folder, ...: the file, not the run, is at fault
        return Fetched(b"", Status.READ_ERROR.value, f"cannot read: {exc.strerror or type(exc).__name__}")
    return Fetched(data)


def _get_s3(client: Any, bucket: str, key: str, if_match: str | None) -> Fetched:
    """One GET, body included; raises on any fault (the caller retries)."""
    args = {"Bucket": bucket, "Key": key, **({"IfMatch": f'"{if_match}"'} if if_match else {})}
    response = client.get_object(**args)
    with contextlib.closing(response["Body"]) as body:
        data = body.read()
    expected = response.get("ContentLength")
    if expected is not None and len(data) != int(expected):
        raise IOError(f"body ended after {len(data)} of {expected} bytes")
    return Fetched(data, etag=schema.normalize_etag(response.get("ETag")))


def _read_s3(path: str, settings: S3Settings, etag: str | None, policy: ReadPolicy) -> Fetched:
    """GET an object and read its body, retrying the whole read (headers and body) with backoff.

    The GET is conditional on the listed ETag (``If-Match``), so the bytes read are the ones
    listed. An object replaced since it was listed is read again unconditionally, and its new
    ETag goes into the row, so that the row never pairs one version's ETag with another's pixels.
    """
    from botocore.exceptions import ClientError

    bucket, _, key = path.partition("/")
    client = s3_client(settings, read_timeout=policy.timeout)
    started = time.monotonic()
    if_match = etag
    last = ""
    for attempt in range(policy.retries + 1):
        if attempt:
            pause = policy.backoff(attempt - 1)
            if time.monotonic() + pause - started > policy.deadline:
                break
            time.sleep(pause)
        try:
            return _get_s3(client, bucket, key, if_match)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                return Fetched(b"", Status.MISSING.value, "listed but no longer there when read")
            if code in _REFUSED_CODES:
                return Fetched(b"", Status.READ_ERROR.value, f"cannot read: {code}")
            if code in _CHANGED_CODES and if_match:
                log.info("%s changed since it was listed (ETag %s); reading the current object", path, if_match)
                if_match = None
                continue
            last = f"{code or type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - any fault while reading one object is that object's
            last = f"{type(exc).__name__}: {exc}"
        log.debug("read %s failed (attempt %d): %s", path, attempt + 1, last)
        if time.monotonic() - started > policy.deadline:
            break
    seconds = time.monotonic() - started
    return Fetched(b"", Status.READ_ERROR.value, f"read failed after {attempt + 1} attempts in {seconds:.1f} s: {last}"[:1000])


def read_object(location: Location, path: str, settings: S3Settings = S3Settings(), size: int | None = None,
                max_bytes: int | None = None, etag: str | None = None, policy: ReadPolicy = ReadPolicy()) -> Fetched:
    """Bytes of one listed object, or a ``missing`` / ``read_error`` / ``too_large`` outcome.
    Never raises for a fault of the object or the store: transient faults, mid-body resets and
    stalls included, are retried under ``policy`` and then become ``read_error``."""
    if max_bytes is not None and size is not None and size > max_bytes:
        return Fetched(b"", Status.TOO_LARGE.value, f"{size} bytes exceeds max_bytes={max_bytes}")
    if location.scheme == "file":
        return _read_local(path)
    return _read_s3(path, settings, etag, policy)


FETCH_THREADS = 16  # concurrent GETs per fetch task: object-store latency, not CPU, bounds a fetch


def _known_size(value: Any) -> int | None:
    """A listing size as Ray hands it over: an int, or None/NaN where the manifest had none."""
    if value is None:
        return None
    number = float(value)
    return None if np.isnan(number) or number < 0 else int(number)


def _fetch_one(location: Location, settings: S3Settings, policy: ReadPolicy, max_bytes: int, path: str,
               size: int | None, etag: str | None) -> Fetched:
    """:func:`read_object` for one figure of a batch; any exception becomes its ``read_error``."""
    try:
        faults.maybe_raise("fetch", path)
        return read_object(location, path, settings, size, max_bytes, etag, policy)
    except Exception as exc:  # noqa: BLE001 - errors are data: one figure's failure is its row
        log.warning("fetch %s: %s: %s", path, type(exc).__name__, exc)
        return Fetched(b"", Status.READ_ERROR.value, f"{type(exc).__name__}: {exc}"[:1000])


def fetch_batch(batch: dict[str, np.ndarray], location: Location, settings: S3Settings, max_bytes: int,
                policy: ReadPolicy = ReadPolicy()) -> dict[str, np.ndarray]:
    """The fetch stage: listing rows → plus ``bytes``, and a read ``status``/``error`` where it
    failed. Objects of a batch are read concurrently (threads), which hides S3 latency.

    ``size`` becomes the number of bytes read (the listed size, or -1 for unknown, when the read
    failed); ``etag`` the normalised ETag of the bytes read, else the listed one (``None`` when
    unknown). Local files are read by their path; their ``mtime-ns:`` stand-in is kept."""
    faults.maybe_raise_task("fetch", batch["path"])
    sizes = [_known_size(s) for s in batch["size"]]
    etags = [schema.normalize_etag(e) for e in batch["etag"]]
    conditional = [e if location.scheme == "s3" else None for e in etags]
    jobs = list(zip((str(p) for p in batch["path"]), sizes, conditional))

    def one(job: tuple[str, int | None, str | None]) -> Fetched:
        return _fetch_one(location, settings, policy, max_bytes, *job)

    if location.scheme == "s3" and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(jobs))) as pool:
            results = list(pool.map(one, jobs))
    else:
        results = [one(job) for job in jobs]
    out = dict(batch)
    out["bytes"] = np.array([r.data for r in results], dtype=object)
    out["read_status"] = np.array([r.status for r in results], dtype=object)
    out["read_error"] = np.array([r.error for r in results], dtype=object)
    out["size"] = np.array([len(r.data) if not r.status else (s if s is not None else -1) for r, s in zip(results, sizes)], dtype=np.int64)
    out["etag"] = np.array([r.etag or e for r, e in zip(results, etags)], dtype=object)
    return out


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
