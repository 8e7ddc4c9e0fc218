"""The fetch stage: the bytes of each listed object, or the reason it has none.

An object that is gone or forbidden when read becomes a row (``missing`` / ``read_error``);
transient faults (throttling, 5xx, resets and stalls in the middle of a body, truncated bodies)
are retried with backoff under a :class:`ReadPolicy`, and a figure whose faults outlast it becomes
a ``read_error`` row with the reason, so no figure can fail the run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from xai_pipeline.job import faults
from xai_pipeline import schema
from xai_pipeline.schema import Status
from xai_pipeline.policies import ReadPolicy
from xai_pipeline.store.source import Location, S3Settings, s3_client

log = logging.getLogger(__name__)


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
