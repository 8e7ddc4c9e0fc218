"""The single-writer table lease on a local folder: exclusive, waited for, taken over once expired,
lost by a holder that could not renew it (the S3 path: tests/integration/job/test_concurrent_runs.py)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from xai_pipeline.store.lease import LEASE_NAME, LeaseHeld, LeaseLost, TableLease
from xai_pipeline.store.source import S3Settings, parse_location


def _lease(tmp_path: Path, run_id: str, **kwargs: float) -> TableLease:
    return TableLease(parse_location(str(tmp_path / "table"), "--output"), S3Settings(), run_id, **kwargs)


def test_one_holder_at_a_time_and_released_at_the_end(tmp_path: Path) -> None:
    with _lease(tmp_path, "first"):
        holder = json.loads((tmp_path / "table" / LEASE_NAME).read_text())
        assert holder["run_id"] == "first"
        with pytest.raises(LeaseHeld, match="run first .* holds the table's lease"):
            _lease(tmp_path, "second").acquire()
    assert not (tmp_path / "table" / LEASE_NAME).exists()
    with _lease(tmp_path, "second"):
        pass


def test_a_waiting_run_gets_the_lease_when_the_holder_ends(tmp_path: Path) -> None:
    first = _lease(tmp_path, "first").acquire()
    threading.Timer(0.5, first.release).start()
    started = time.monotonic()
    with _lease(tmp_path, "second", wait=10.0):
        assert 0.3 < time.monotonic() - started < 8


def test_an_expired_lease_is_taken_over_and_its_holder_stops_committing(tmp_path: Path) -> None:
    crashed = _lease(tmp_path, "crashed", ttl=0.6).acquire()
    crashed._stop.set()  # a holder that stopped renewing (killed, paused)
    time.sleep(0.8)
    with _lease(tmp_path, "next", ttl=30.0) as taken:
        taken.check()
        crashed._stop.clear()
        crashed._renew_once()
        with pytest.raises(LeaseLost):
            crashed.check()
    # Runs taking over the same stale lease: exactly one wins, and none ever reads a
    # half-written lease (a run that crashes on one would be an error, not "held").
    for round_ in range(5):
        stale = _lease(tmp_path, f"stale{round_}", ttl=0.2).acquire()
        stale._stop.set()
        time.sleep(0.3)
        results: list[str] = []

        def take(name: str) -> None:
            try:
                lease = _lease(tmp_path, name, ttl=0.2).acquire()
                lease._stop.set()
                results.append("won")
            except LeaseHeld:
                results.append("held")
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results.append(f"error: {exc!r}")

        threads = [threading.Thread(target=take, args=(f"r{round_}.{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["held", "held", "held", "won"], (round_, results)
        time.sleep(0.3)  # the winner's lease expires too; the next round takes it over
