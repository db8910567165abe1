"""All terminal output goes through here.

Status and progress go to stderr, results (tables, JSON, paths a script may want) to
stdout, so ``llamapod status --json | jq`` works. On a terminal output is styled with
rich; elsewhere (CI, log files, Slurm output) it is plain lines without control codes.
rich is imported lazily so ``llamapod --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

_state = {"quiet": False, "debug": False}
_consoles: dict[str, Any] = {}


def configure(*, quiet: bool | None = None, debug: bool | None = None) -> None:
    if quiet is not None:
        _state["quiet"] = quiet
    if debug is not None:
        _state["debug"] = debug


def debug_enabled() -> bool:
    return bool(_state["debug"]) or os.environ.get("LLAMAPOD_DEBUG") == "1"


def is_tty(stream=None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb"


def _console(stream: str = "err"):
    """A rich Console bound to stderr ("err") or stdout ("out"), created on first use."""
    if stream not in _consoles:
        from rich.console import Console

        target = sys.stderr if stream == "err" else sys.stdout
        _consoles[stream] = Console(
            file=target,
            highlight=False,
            soft_wrap=True,
            force_terminal=None if is_tty(target) else False,
            no_color=not is_tty(target) or "NO_COLOR" in os.environ,
        )
    return _consoles[stream]


def _emit(text: str, style: str | None = None, stream: str = "err") -> None:
    target = sys.stderr if stream == "err" else sys.stdout
    if is_tty(target) and style:
        from rich.markup import escape

        _console(stream).print(f"[{style}]{escape(text)}[/]")
    else:
        target.write(text + "\n")
        target.flush()


# ---- status lines (stderr) -------------------------------------------------------


def info(message: str) -> None:
    if not _state["quiet"]:
        _emit(message)


def step(message: str) -> None:
    """A step of a longer operation starting ("creating network stack ...")."""
    if not _state["quiet"]:
        _emit(f"• {message}", "bold")


def success(message: str) -> None:
    if not _state["quiet"]:
        _emit(f"✓ {message}", "green")


def warn(message: str) -> None:
    _emit(f"warning: {message}", "yellow")


def error(message: str, hint: str | None = None) -> None:
    _emit(f"error: {message}", "bold red")
    if hint:
        _emit(f"  hint: {hint}", "cyan")


def debug(message: str) -> None:
    if debug_enabled():
        _emit(f"debug: {message}", "dim")


class _LibraryLogHandler(logging.Handler):
    """Renders what llamapod's library modules log like every other status line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        if record.levelno >= logging.ERROR:
            error(message)
        elif record.levelno >= logging.WARNING:
            warn(message)
        else:
            debug(message)


def route_library_logs() -> None:
    """Send the ``llamapod`` loggers' warnings (and, with --debug, details) to this module.

    Library code logs instead of printing; the command line decides how that looks.
    """
    logger = logging.getLogger("llamapod")
    if not any(isinstance(h, _LibraryLogHandler) for h in logger.handlers):
        logger.addHandler(_LibraryLogHandler())
    logger.setLevel(logging.DEBUG if debug_enabled() else logging.WARNING)


# ---- results (stdout) ------------------------------------------------------------


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def out_json(data: Any) -> None:
    out(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    if is_tty(sys.stdout):
        from rich.table import Table

        t = Table(title=title, header_style="bold")
        for h in headers:
            t.add_column(h)
        for row in rows:
            t.add_row(*row)
        _console("out").print(t)
        return
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    if title:
        out(title)
    out("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        out("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def confirm(question: str, default: bool = False) -> bool:
    """Ask yes/no on a terminal; without one, the answer is ``default``."""
    if not sys.stdin or not sys.stdin.isatty():
        return default
    suffix = " [Y/n] " if default else " [y/N] "
    sys.stderr.write(question + suffix)
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if not answer:
        return default
    return answer in ("y", "yes")


# ---- progress --------------------------------------------------------------------


class Progress:
    """A progress display: a live bar on a terminal, throttled plain lines otherwise.

    ``update(completed, description)`` may be called as often as wanted; without a
    terminal a line is written at most every ``plain_interval`` seconds (and always
    for the last update), so logs stay readable.
    """

    def __init__(self, description: str, total: float | None = None, plain_interval: float = 10.0):
        self.description = description
        self.total = total
        self.plain_interval = plain_interval
        self._last_plain = 0.0
        self._rich = None
        self._task = None

    def __enter__(self) -> "Progress":
        if is_tty() and not _state["quiet"]:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            self._rich = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=_console("err"),
                transient=False,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total)
        return self

    def update(self, completed: float, description: str | None = None, force: bool = False) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=completed, description=description or self.description)
            return
        now = time.monotonic()
        if _state["quiet"] or (not force and now - self._last_plain < self.plain_interval):
            return
        self._last_plain = now
        total = f"/{self.total:g}" if self.total else ""
        _emit(f"{description or self.description} [{completed:g}{total}]")

    def log(self, message: str) -> None:
        """A line printed above the bar (or plainly), e.g. a metrics line."""
        if self._rich is not None:
            self._rich.console.print(message, highlight=False, markup=False)
        elif not _state["quiet"]:
            _emit(message)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)


@contextmanager
def status(message: str) -> Iterator[None]:
    """An indeterminate wait ("waiting for ..."): a spinner on a terminal, one line elsewhere."""
    if is_tty() and not _state["quiet"]:
        with _console("err").status(message):
            yield
    else:
        info(message)
        yield
