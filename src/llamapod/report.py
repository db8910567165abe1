"""How library code tells a person what is happening, without printing.

Library modules say what happens through this module: ``report.step`` (a longer operation
starts), ``report.info``, ``report.success``, ``report.warn``, ``report.result`` (a line a
script may want: a path, a command), ``report.progress(...)`` (a bar with ``update`` and
``log``) and ``report.waiting(...)`` (an indeterminate wait). Where it goes is the current
``Reporter``'s business: by default the ``llamapod`` logger, so code that imports llamapod
as a library sees it in its own logs; the command line installs one that renders it on the
terminal (the ``cli`` package's ``ui`` module), and only ``cli`` prints.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Protocol

log = logging.getLogger("llamapod")


class ProgressBar(Protocol):
    def update(self, completed: float, description: str | None = None) -> None: ...

    def log(self, message: str) -> None:
        """A line shown above the bar (or plainly, without a terminal)."""


class Reporter(Protocol):
    def step(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def success(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def result(self, message: str) -> None: ...

    def progress(self, description: str, total: float | None, plain_updates: bool = True): ...

    def waiting(self, message: str): ...


class _LogBar:
    def __init__(self, description: str) -> None:
        self._description = description

    def update(self, completed: float, description: str | None = None) -> None:
        if description:
            self._description = description

    def log(self, message: str) -> None:
        log.info(message)


class LogReporter:
    """Everything to the ``llamapod`` logger: the reporter of library use."""

    def step(self, message: str) -> None:
        log.info(message)

    def info(self, message: str) -> None:
        log.info(message)

    def success(self, message: str) -> None:
        log.info(message)

    def warn(self, message: str) -> None:
        log.warning(message)

    def result(self, message: str) -> None:
        log.info(message)

    @contextmanager
    def progress(self, description: str, total: float | None, plain_updates: bool = True) -> Iterator[ProgressBar]:
        log.info(description)
        yield _LogBar(description)

    @contextmanager
    def waiting(self, message: str) -> Iterator[None]:
        log.info(message)
        yield


class QuietReporter(LogReporter):
    """Warnings only (worker ranks other than 0: one rank speaks for the job)."""

    def step(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def success(self, message: str) -> None:
        pass

    def result(self, message: str) -> None:
        pass

    @contextmanager
    def progress(self, description: str, total: float | None, plain_updates: bool = True) -> Iterator[ProgressBar]:
        yield _SilentBar()

    @contextmanager
    def waiting(self, message: str) -> Iterator[None]:
        yield


class _SilentBar:
    def update(self, completed: float, description: str | None = None) -> None:
        pass

    def log(self, message: str) -> None:
        pass


_current: list[Reporter] = [LogReporter()]


def use(reporter: Reporter) -> None:
    """Install the reporter every later call goes to (the command line does this once)."""
    _current[0] = reporter


def current() -> Reporter:
    return _current[0]


def step(message: str) -> None:
    _current[0].step(message)


def info(message: str) -> None:
    _current[0].info(message)


def success(message: str) -> None:
    _current[0].success(message)


def warn(message: str) -> None:
    _current[0].warn(message)


def result(message: str) -> None:
    _current[0].result(message)


def progress(description: str, total: float | None = None, plain_updates: bool = True):
    """``with report.progress("tokenizing", total=n) as bar: bar.update(done)``.

    ``plain_updates=False``: without a terminal, only the bar's ``log`` lines show (a
    trainer's metrics lines already say how far it is).
    """
    return _current[0].progress(description, total, plain_updates)


def waiting(message: str):
    """``with report.waiting("waiting for the cluster"):`` (a spinner on a terminal)."""
    return _current[0].waiting(message)
