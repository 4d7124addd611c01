"""The command line's one way to show progress of a long-running verb.

Library code reports progress through a callback (units done of a total, plus a few figures);
the CLI hands it ``Progress.update``. On a terminal that draws a tqdm bar on stderr; otherwise
(a log file, a CI job, ``ray job submit``) it writes a plain line to stderr at most every
``every_s`` seconds, plus the first and the last event, so logs stay short and still show life.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import click

__all__ = ["Progress", "format_eta"]


def format_eta(seconds: float | None) -> str:
    """Seconds -> ``1h02m``, ``3m05s`` or ``42s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


class Progress:
    """A progress display: ``update(done, total, **figures)`` with absolute counts.

    Use as a context manager (closes the bar). ``bar=None`` picks tqdm when ``stream`` is a
    terminal; ``figures`` (e.g. ``images=..., img_per_s=..., eta=...``) show as the bar's postfix
    or at the end of the plain line."""

    def __init__(self, desc: str, *, unit: str = "it", total: int | None = None, every_s: float = 30.0,
                 stream: TextIO | None = None, bar: bool | None = None):
        self.desc, self.unit, self.total, self.every_s = desc, unit, total, every_s
        self.stream = stream or sys.stderr
        use_bar = bar if bar is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)
        self._last_line = None  # monotonic time of the last plain line

    def update(self, done: int, total: int | None = None, **figures: Any) -> None:
        """``done`` of ``total`` (absolute; ``total`` may change, e.g. once it is known)."""
        if total is not None:
            self.total = total
        if self._bar is not None:
            if total is not None and self._bar.total != total:
                self._bar.total = total
            self._bar.n = done
            if figures:
                self._bar.set_postfix({k: _fmt(v) for k, v in figures.items()}, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        final = self.total is not None and done >= self.total
        if self._last_line is not None and now - self._last_line < self.every_s and not final:
            return
        self._last_line = now
        of = f"/{self.total}" if self.total is not None else ""
        pct = f" ({100.0 * done / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k.replace('_', ' ')} {_fmt(v)}" for k, v in figures.items())
        click.echo(f"{self.desc}: {done}{of} {self.unit}{pct}{extra}", file=self.stream)

    def note(self, message: str) -> None:
        """A line the user should see now (e.g. what the run is waiting for), above the bar if any."""
        line = f"{self.desc}: {message}"
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            click.echo(line, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
