"""The summary of a run: printed as one JSON line, stored beside the table, listed by ``runs``."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any



def new_run_id() -> str:
    """``YYYYMMDDTHHMMSSZ-xxxxxxxx``: sorts by start time."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@dataclass
class RunSummary:
    """What one run did.

    ``inputs``: objects listed. ``skipped``: not processed (already committed by this model
    version; for reindex: unchanged). ``processed``: rows written (``ok`` + ``errors``).
    ``redone``: processed figures that an interrupted earlier run had in flight but never
    committed. ``new`` / ``changed``: figures with no row / with stale rows (another model
    version or settings, several rows, a status to retry; for reindex also changed content);
    ``deleted``: reindex's figures gone from the collection. ``reused``: rows an interrupted
    reindex had staged, committed by this run (counted in ``processed``). ``missing``: objects
    this run had to process that have no row (a batch lost after its retries); the command then
    exits with code 3 and ``state`` is ``incomplete`` (else ``finished``). ``classifier_actors``:
    classifier actors whose rows this run wrote (the pool's size, unless actors were restarted).
    """

    run_id: str
    kind: str
    inputs: int
    skipped: int
    processed: int
    ok: int
    errors: int
    seconds: float
    figures_per_second: float  # end to end: listing, Ray start, processing and commits
    process_figures_per_second: float  # while the Ray pipelines ran (what scales with the cluster)
    table_version: int | None
    output: str
    model_name: str
    model_version: str
    started_at: str
    redone: int = 0
    commits: int = 0
    new: int = 0
    changed: int = 0
    deleted: int = 0
    reused: int = 0
    missing: int = 0
    classifier_actors: int = 0
    state: str = ""
    mode: str = ""
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)
