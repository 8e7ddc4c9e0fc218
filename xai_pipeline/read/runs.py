"""The ``runs`` command's table: one line per run record, newest last."""

from __future__ import annotations

from typing import Any

HEADER = (f"{'run_id':<27}{'kind':<9}{'state':<12}{'inputs':>8}{'processed':>10}{'skipped':>9}{'deleted':>8}{'missing':>8}"
          f"{'ok':>7}{'errors':>7}{'fig/s':>9}{'seconds':>9}{'version':>8}  model")


def format_runs(runs: list[dict[str, Any]]) -> list[str]:
    """A header and one fixed-width line per run; running or interrupted runs show when they started."""
    lines = [HEADER]
    for r in runs:
        state = r.get("state") or "finished"  # records written before states were recorded
        if state in ("running", "interrupted"):
            cleaned = f", cleaned up by {r['cleaned_up_by']}" if r.get("cleaned_up_by") else ""
            lines.append(f"{r['run_id']:<27}{r['kind']:<9}{state:<12}  started {r.get('started_at', '?')}{cleaned}")
            continue
        lines.append(f"{r['run_id']:<27}{r['kind']:<9}{state:<12}{r['inputs']:>8}{r['processed']:>10}{r['skipped']:>9}"
                     f"{r.get('deleted', 0):>8}{r.get('missing', 0):>8}{r['ok']:>7}{r['errors']:>7}{r['figures_per_second']:>9.2f}"
                     f"{r['seconds']:>9.1f}{str(r['table_version']):>8}  {r['model_name']} {r['model_version']}")
    return lines
