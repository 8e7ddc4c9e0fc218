"""A progress bar on stderr for long commands (report, export). Quiet when stderr is not a
terminal unless forced, so logs and CI output stay clean; Ray draws its own bars for jobs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress("export", total) as bar: bar.update(n)``."""

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None, force: bool = False) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self._started = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> "Progress":
        self._draw(final=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self._draw(final=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if time.perf_counter() - self._last >= 0.1:
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        if not self.enabled:
            return
        self._last = time.perf_counter()
        elapsed = self._last - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            share = min(1.0, self.done / self.total)
            bar = "#" * int(share * 30)
            text = f"\r{self.label} [{bar:<30}] {self.done}/{self.total} ({rate:.0f}/s)"
        else:
            text = f"\r{self.label} {self.done} ({rate:.0f}/s)"
        self.stream.write(text + ("\n" if final else ""))
        self.stream.flush()
