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
        _emit(f"• {one_line(message)}", "bold")


def success(message: str) -> None:
    if not _state["quiet"]:
        _emit(f"✓ {message}", "green")


def warn(message: str) -> None:
    _emit(f"warning: {one_line(message)}", "yellow")


def error(message: str, hint: str | None = None) -> None:
    _emit(f"error: {one_line(message)}", "bold red")
    if hint:
        _emit(f"  hint: {one_line(hint)}", "cyan")


# Bidirectional controls reorder what a terminal shows (U+202E turns "txt.exe" around).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def one_line(text: str) -> str:
    """``text`` with every control character escaped (a newline as \\n, ESC as \\x1b).

    Errors and warnings quote paths and names as the user typed them: one holding a newline
    must not split the error line, an escape sequence must not restyle the terminal.
    """
    import unicodedata

    if text.isprintable():
        return text
    return "".join(repr(ch)[1:-1] if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") else ch
                   for ch in text)


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

    def __init__(self, description: str, total: float | None = None, plain_interval: float | None = 10.0):
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
        if description:
            self.description = description  # kept for later updates that give none
        if self._rich is not None:
            self._rich.update(self._task, completed=completed, description=self.description)
            return
        now = time.monotonic()
        if _state["quiet"] or self.plain_interval is None or (not force and now - self._last_plain < self.plain_interval):
            return
        self._last_plain = now
        total = f"/{self.total:g}" if self.total else ""
        _emit(f"{self.description} [{completed:g}{total}]")

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
    message = one_line(message)
    if is_tty() and not _state["quiet"]:
        with _console("err").status(message):
            yield
    else:
        info(message)
        yield


# ---- the library's reporter --------------------------------------------------------


class UiReporter:
    """Renders what library code reports (``llamapod.report``) with the functions above."""

    def step(self, message: str) -> None:
        step(message)

    def info(self, message: str) -> None:
        info(message)

    def success(self, message: str) -> None:
        success(message)

    def warn(self, message: str) -> None:
        warn(message)

    def result(self, message: str) -> None:
        out(message)

    def progress(self, description: str, total: float | None, plain_updates: bool = True):
        return Progress(description, total=total, plain_interval=10.0 if plain_updates else None)

    def waiting(self, message: str):
        return status(message)


def install_reporter(*, quiet: bool = False) -> None:
    """Route library reports here: every ``llamapod`` command and worker calls this first."""
    from llamapod import report

    if quiet:
        configure(quiet=True)
    report.use(UiReporter())
    route_library_logs()
