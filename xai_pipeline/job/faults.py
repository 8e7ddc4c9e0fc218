"""Fault injection for tests: make one stage raise for chosen figures, inside Ray workers.

Not a production switch. When the environment variable :data:`FAULTS_ENV` names a JSON file, the
stages read it (at most once a second per process) and raise :class:`InjectedFault`:

* ``{"decode": ["fig07.png"]}``: while decoding a figure whose path or URI contains
  ``fig07.png``: a per-figure failure, which the stage must turn into that figure's row;
* ``{"task:encode": ["fig07.png"]}``: for the whole batch holding such a figure, outside any
  per-figure handling: a task failure, which Ray retries and which, if it persists, loses the
  batch (the run then exits with code 3 and the next run redoes it).

* ``{"delay:decode": ["fig07.png"]}``: decoding such a figure first sleeps
  :data:`DELAY_SECONDS` (a slow figure, so that a test can act while a run is still streaming);
* ``{"delay:commit": ["[commit 1]"], "delay_seconds": 120}``: the driver sleeps 120 s right after
  its first Delta commit (names are ``[commit N]``), so a test that kills the driver once that
  commit is visible lands between two commits, with rows still in flight, however fast the
  machine. ``delay_seconds`` (optional) replaces :data:`DELAY_SECONDS` for every delay rule.

Stages: ``fetch``, ``decode``, ``classify``, ``encode``. The variable must be set where the
workers start (the ``runtime_env`` of ``ray.init``); the file may change between runs. Without
the variable every call costs one dictionary look-up.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import Any

FAULTS_ENV = "XAI_PIPELINE_TEST_FAULTS"
DELAY_SECONDS = 3.0
_cache: dict[str, Any] = {"at": 0.0, "path": None, "rules": {}}


class InjectedFault(RuntimeError):
    """The exception a test asked for."""


def _rules() -> dict[str, Any]:
    path = os.environ.get(FAULTS_ENV)
    if not path:
        return {}
    now = time.monotonic()
    if _cache["path"] != path or now - _cache["at"] > 1.0:
        try:
            with open(path) as fh:
                rules = json.load(fh)
        except (OSError, ValueError):
            rules = {}
        _cache.update(at=now, path=path, rules=rules)
    return _cache["rules"]


def _matches(rules: dict[str, Any], key: str, names: Iterable[Any]) -> str | None:
    patterns = rules.get(key) or []
    for name in names:
        text = str(name)
        if any(p in text for p in patterns):
            return text
    return None


def maybe_raise(stage: str, name: object) -> None:
    """Raise :class:`InjectedFault` when the hook asks ``stage`` to fail on this figure."""
    rules = _rules()
    if rules and _matches(rules, stage, [name]):
        raise InjectedFault(f"injected {stage} fault for {name}")


def maybe_raise_task(stage: str, names: Iterable[Any]) -> None:
    """Raise :class:`InjectedFault` for a whole batch when the hook names one of its figures."""
    rules = _rules()
    if rules:
        hit = _matches(rules, f"task:{stage}", names)
        if hit:
            raise InjectedFault(f"injected {stage} task fault (batch holding {hit})")


def maybe_delay(stage: str, name: object) -> None:
    """Sleep when the hook names this figure (or commit) under ``delay:<stage>``.

    The sleep is the rules' ``delay_seconds``, else :data:`DELAY_SECONDS`.
    """
    rules = _rules()
    if rules and _matches(rules, f"delay:{stage}", [name]):
        time.sleep(float(rules.get("delay_seconds", DELAY_SECONDS)))
