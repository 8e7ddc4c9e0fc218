"""A single-writer lease per table, so two ``index`` / ``reindex`` runs cannot both write it.

Delta commits themselves are safe with concurrent writers (delta-rs commits to S3 with
conditional puts, locally with atomic renames), but two runs on one table would both see the
same figures as not yet done and both append them. The lease is the object
``_xai_pipeline/lease.json`` beside the Delta log::

    {"run_id": ..., "host": ..., "pid": ..., "acquired_at": ..., "expires_at": ...}

* taken with a conditional create: S3 ``PUT`` with ``If-None-Match: *`` (AWS S3 and moto honour
  it), locally a read-compare-rename under an exclusive ``flock`` of ``lease.json.lock``;
* renewed every ``ttl / 3`` seconds by a thread, with a conditional replace of the version it
  wrote (S3 ``If-Match`` on its ETag); a run whose renewal is refused has lost the lease and stops
  before its next commit;
* a lease past ``expires_at`` (its holder crashed), or held by a process of this host that no
  longer exists (a killed driver), is taken over with a conditional replace of that stale
  version, so two runs cannot both take it over;
* released (deleted) when the run ends.

A run that finds the lease held waits up to ``--lease-wait`` seconds, then stops with
:class:`LeaseHeld`, naming the holder (exit code 4).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from xai_pipeline.store.source import Location, S3Settings, s3_client
from xai_pipeline.errors import LeaseHeld, LeaseLost

log = logging.getLogger(__name__)

LEASE_NAME = "_xai_pipeline/lease.json"
DEFAULT_TTL = 300.0


def _dead_here(holder: dict[str, Any]) -> bool:
    """True when the holder ran on this host and its process is gone (killed): no need to wait
    for the lease to expire. A holder on another host is trusted until ``expires_at``."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class _Store:
    """Conditional create / replace / read / delete of one small object, S3 or local."""

    location: Location
    settings: S3Settings

    @property
    def path(self) -> str:
        return f"{self.location.path.rstrip('/')}/{LEASE_NAME}"

    def read(self) -> tuple[dict[str, Any], str] | None:
        """The lease and its version (ETag, or a content hash locally), or None."""
        if self.location.scheme == "file":
            try:
                with open(self.path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                return None
            return json.loads(data), hashlib.sha256(data).hexdigest()
        from botocore.exceptions import ClientError

        bucket, _, key = self.path.partition("/")
        try:
            response = s3_client(self.settings).get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(response["Body"].read()), str(response["ETag"])

    def write(self, payload: dict[str, Any], if_version: str | None) -> str | None:
        """Create (``if_version=None``) or replace the version ``if_version``; returns the new
        version, or None when the condition does not hold."""
        data = json.dumps(payload).encode()
        if self.location.scheme == "file":
            return self._write_local(data, if_version)
        from botocore.exceptions import ClientError

        bucket, _, key = self.path.partition("/")
        condition = {"IfNoneMatch": "*"} if if_version is None else {"IfMatch": if_version}
        try:
            return str(s3_client(self.settings).put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return None
            raise

    @contextlib.contextmanager
    def _local_lock(self) -> Iterator[None]:
        """An exclusive ``flock`` on ``lease.json.lock``: a compare-and-swap of the local lease is
        read, compare and replace under it. ``flock`` locks belong to the open file, so threads of
        one process exclude each other as processes do."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(f"{self.path}.lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write_local(self, data: bytes, if_version: str | None) -> str | None:
        """Compare-and-swap under the lock; the new version is written to a temporary file and
        renamed over the lease, so a reader never sees a half-written lease."""
        with self._local_lock():
            current = self.read()
            if (current is not None) if if_version is None else (current is None or current[1] != if_version):
                return None
            tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        return hashlib.sha256(data).hexdigest()

    def delete(self) -> None:
        if self.location.scheme == "file":
            with self._local_lock():
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            return
        bucket, _, key = self.path.partition("/")
        s3_client(self.settings).delete_object(Bucket=bucket, Key=key)


@dataclass
class TableLease:
    """The lease of one table for one run; use as a context manager."""

    location: Location
    settings: S3Settings
    run_id: str
    ttl: float = DEFAULT_TTL
    wait: float = 0.0
    _store: _Store = field(init=False)
    _version: str | None = field(default=None, init=False)
    _lost: bool = field(default=False, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._store = _Store(self.location, self.settings)

    def _payload(self) -> dict[str, Any]:
        now = _now()
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "acquired_at": now.isoformat(),
                "expires_at": (now + dt.timedelta(seconds=self.ttl)).isoformat()}

    def _try_acquire(self) -> dict[str, Any] | None:
        """Take the lease if free or expired; returns the holder's lease when it is not."""
        current = self._store.read()
        if current is None:
            self._version = self._store.write(self._payload(), None)
            return None if self._version else (self._store.read() or ({}, ""))[0]
        holder, version = current
        if dt.datetime.fromisoformat(holder["expires_at"]) > _now() and not _dead_here(holder):
            return holder
        log.warning("lease of %s held by run %s expired at %s: taking it over", self.location.uri, holder.get("run_id"), holder["expires_at"])
        self._version = self._store.write(self._payload(), version)
        return None if self._version else (self._store.read() or ({}, ""))[0]

    def acquire(self) -> "TableLease":
        deadline = time.monotonic() + self.wait
        while True:
            holder = self._try_acquire()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"--output {self.location.uri}: run {holder.get('run_id')} on {holder.get('host')} holds the table's lease until "
                    f"{holder.get('expires_at')}; wait for it to finish, or pass --lease-wait SECONDS to wait"
                )
            time.sleep(min(1.0, max(0.2, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._renew, name="table-lease", daemon=True)
        self._thread.start()
        log.info("run %s holds the lease of %s", self.run_id, self.location.uri)
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if not self._renew_once():
                return

    def _renew_once(self) -> bool:
        """Extend the lease; False once it is lost (another run replaced it)."""
        try:
            version = self._store.write(self._payload(), self._version)
        except Exception as exc:  # noqa: BLE001 - a failed renewal is retried at the next tick
            log.warning("renewing the lease of %s failed (%s); retrying", self.location.uri, exc)
            return True
        if version is None:
            self._lost = True
            log.error("run %s lost the lease of %s: another run took it over", self.run_id, self.location.uri)
            return False
        self._version = version
        return True

    def check(self) -> None:
        """Raise :class:`LeaseLost` when the lease was taken over: call before each commit."""
        if self._lost:
            raise LeaseLost(f"run {self.run_id} lost the lease of {self.location.uri} to another run; it stopped before committing more")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        current = self._store.read()
        if current is not None and current[0].get("run_id") == self.run_id and not self._lost:
            self._store.delete()

    def __enter__(self) -> "TableLease":
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()
