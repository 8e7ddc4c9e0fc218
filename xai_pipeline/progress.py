"""Progress bars for long read-side commands (report, export), drawn by ``tqdm`` on stderr.

Quiet when stderr is not a terminal unless forced, so logs and CI output stay clean; the
indexing job's bar is Ray Data's own (also tqdm).
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


def progress_bar(label: str, total: int | None, *, stream: TextIO | None = None, force: bool = False) -> tqdm:
    """``with progress_bar("export", total) as bar: bar.update(n)``: a bar of ``total`` steps
    (a counter with a rate when ``total`` is None)."""
    stream = stream or sys.stderr
    enabled = force or stream.isatty()
    return tqdm(total=total, desc=label, unit="fig", file=stream, disable=not enabled, mininterval=0.1, dynamic_ncols=True)
