"""Waiting on AWS: clocks, deadlines, parallel steps and the live progress lines.

Every wait in ``up`` and ``down`` polls with a deadline through a ``Clock``. The real
clock sleeps; ``VirtualClock`` only advances a per-thread time, so a benchmark or a
test can play a 30-minute cluster creation in milliseconds and still see which waits
overlap. Time flows between threads the way causality does: a step started in
parallel begins at its parent's time, and joining steps moves the parent to the
latest of them (so the measured total is the critical path, not the sum).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Protocol, TypeVar

from llamapod.cloud.session import TRANSIENT_CODES
from llamapod.errors import CloudError, ClusterStateError, LlamapodError

T = TypeVar("T")


class Cancelled(LlamapodError):
    """Another step failed or the user interrupted: this step stops waiting."""

    def __init__(self) -> None:
        super().__init__("cancelled", "run the same command again: it continues where it stopped")


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float, cancel: threading.Event) -> None: ...

    def enter(self, start: float) -> None:
        """Start the calling thread's time at ``start`` (a parallel step's parent time)."""

    def catch_up(self, until: float) -> None:
        """Move the calling thread's time to ``until`` if that is later (joining steps)."""


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, cancel: threading.Event) -> None:
        # Event.wait, not time.sleep: an interrupt or a failed sibling step ends the wait at once.
        if cancel.wait(max(0.0, seconds)):
            raise Cancelled()

    def enter(self, start: float) -> None:
        pass

    def catch_up(self, until: float) -> None:
        pass


class VirtualClock:
    """Simulated time, kept per thread; ``sleep`` returns at once and advances it."""

    def __init__(self, start: float = 0.0) -> None:
        self._start = start
        self._local = threading.local()

    def now(self) -> float:
        return getattr(self._local, "t", self._start)

    def sleep(self, seconds: float, cancel: threading.Event) -> None:
        if cancel.is_set():
            raise Cancelled()
        self._local.t = self.now() + max(0.0, seconds)

    def enter(self, start: float) -> None:
        self._local.t = start

    def catch_up(self, until: float) -> None:
        self._local.t = max(self.now(), until)


def default_clock() -> Clock:
    return RealClock()


def format_elapsed(seconds: float) -> str:
    seconds = int(max(0, seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class WaitRecord:
    what: str
    start: float
    end: float | None = None


@dataclass
class Reporter:
    """Prints one line whenever a resource's state changes, stamped with the elapsed time.

    Plain lines (not a live table) because ``up`` runs for 20 minutes, often in a
    terminal multiplexer or CI log, and a line per change is what a person scrolls back to.
    ``waits`` keeps every wait with its start and end (the benchmark prints them).
    """

    clock: Clock
    emit: Callable[[str], None] | None = None  # report.info unless given
    t0: float = 0.0
    waits: list[WaitRecord] = field(default_factory=list)
    _states: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.t0 = self.clock.now()
        if self.emit is None:
            from llamapod import report

            self.emit = report.info

    def elapsed(self) -> float:
        return self.clock.now() - self.t0

    def line(self, message: str) -> None:
        if self.emit is not None:  # always set by __post_init__
            self.emit(f"  [{format_elapsed(self.elapsed())}] {message}")

    def state(self, resource: str, state: str) -> None:
        with self._lock:
            if self._states.get(resource) == state:
                return
            self._states[resource] = state
        self.line(f"{resource}: {state}")

    def wait_started(self, what: str) -> WaitRecord:
        record = WaitRecord(what, self.clock.now() - self.t0)
        with self._lock:
            self.waits.append(record)
        return record

    def wait_ended(self, record: WaitRecord) -> None:
        record.end = self.clock.now() - self.t0


def stopped_deleting(what: str, status: Callable[[dict], str | None], deleting: str,
                     reason: Callable[[dict], str | None], holder: str) -> Callable[[dict | None], None]:
    """A ``failed`` check for ``Waiter.until`` on a deletion: a resource once seen ``deleting``
    that then shows any other status (AWS gave up: ``Failed``, ``FAILED``, ...) will not go away
    by waiting, so the wait ends now with AWS's reason instead of at its deadline. A status other
    than ``deleting`` before it was seen is a stale first answer, not a failure."""
    seen_deleting = False

    def check(resource: dict | None) -> None:
        nonlocal seen_deleting
        if resource is None:
            return
        current = status(resource)
        if current == deleting:
            seen_deleting = True
        elif seen_deleting:
            said = reason(resource) or "AWS gave no reason"
            raise ClusterStateError(f"deleting {what} stopped: it is {current}: {said}",
                                    f"run `llamapod down` again; if it stops again, the reason names what holds "
                                    f"the {holder}")

    return check


@dataclass
class Waiter:
    """What every wait needs: the clock, the shared cancel flag, and where to report."""

    clock: Clock
    cancel: threading.Event
    reporter: Reporter

    def until(self, what: str, probe: Callable[[], T], done: Callable[[T], bool], *, timeout: float,
              interval: float, describe: Callable[[T], str] | None = None,
              failed: Callable[[T], None] | None = None) -> T:
        """Poll ``probe`` every ``interval`` seconds until ``done``; ``failed`` raises to stop early."""
        record = self.reporter.wait_started(what)
        deadline = self.clock.now() + timeout
        try:
            while True:
                try:
                    value = probe()
                except CloudError as exc:
                    # botocore already retried this call; one more failure must not end a
                    # 20-minute wait when the next poll would answer.
                    if exc.code not in TRANSIENT_CODES or self.clock.now() >= deadline:
                        raise
                    self.reporter.state(what, f"{exc.code} from AWS, polling again")
                    self.clock.sleep(interval, self.cancel)
                    continue
                if describe is not None:
                    self.reporter.state(what, describe(value))
                if failed is not None:
                    failed(value)
                if done(value):
                    return value
                if self.clock.now() >= deadline:
                    raise ClusterStateError(
                        f"{what} did not finish within {format_elapsed(timeout)}",
                        "check it in the AWS console; run the same command again to keep waiting")
                self.clock.sleep(interval, self.cancel)
        finally:
            self.reporter.wait_ended(record)

    def parallel(self, steps: dict[str, Callable[[], object]]) -> dict[str, object]:
        """Run independent steps at once; the first failure cancels the others and is raised."""
        start = self.clock.now()
        results: dict[str, object] = {}
        ends: list[float] = []

        def run(fn: Callable[[], object]) -> object:
            self.clock.enter(start)
            try:
                return fn()
            finally:
                ends.append(self.clock.now())

        pool = ThreadPoolExecutor(max_workers=len(steps), thread_name_prefix="llamapod-step")
        futures = {name: pool.submit(run, fn) for name, fn in steps.items()}
        try:
            wait(futures.values(), return_when=FIRST_EXCEPTION)
            if any(f.done() and f.exception() is not None for f in futures.values()):
                self.cancel.set()
            for name, future in futures.items():
                results[name] = future.result()
        except BaseException:
            self.cancel.set()
            pool.shutdown(wait=True)
            raise _first_real_failure(futures.values())
        pool.shutdown(wait=True)
        self.clock.catch_up(max(ends, default=start))
        return results


def _first_real_failure(futures) -> BaseException:
    """The failure that caused the others (a step's ``Cancelled`` is only a consequence)."""
    import sys

    errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
    for exc in errors:
        if not isinstance(exc, Cancelled):
            return exc
    current = sys.exc_info()[1]
    return current if current is not None else (errors[0] if errors else Cancelled())
