"""The state several prepare processes share through the output directory.

Every process of one preparation run (one machine, or one per node of a Slurm job, all
given the same run id) works in ``OUT/.prepare/``:

- ``lock``: an exclusive ``flock`` held for a moment to claim a part, mark one complete, to
  set the directory up and to write the index (Lustre mounted with ``flock``, as HyperPod mounts
  FSx, and NFS both honour it across machines);
- ``claims-<run>``: the next part number the run hands out; parts go out in corpus order,
  so a ``--max_tokens`` cut is reached with little work past it;
- ``parts/part_<k>.json``: written once every shard of part ``k`` is complete, with the run
  that wrote or re-verified it; only this run's markers count when the index is written;
- ``sources/part_<k>``: the fingerprint of the files part ``k`` was read from: a re-run after
  a file was replaced (a damaged download fetched again) redoes that part only;
- ``progress/<run>.<host>.<pid>.json``: each process's counters, summed for the progress line.

A re-run (another run id) re-verifies what earlier runs finished and redoes the rest; the
index is written by whichever process finds every needed part complete, and ``.prepare``
is removed then.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from llamapod.data.atomic import file_lock, write_bytes_atomic, write_json_atomic
from llamapod.data.shards import INDEX, ShardInfo, part_shard_pattern
from llamapod.errors import DataError

STATE_DIR = ".prepare"
LOCK_ATTEMPTS = 5
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class Counters:
    """What one process has done so far in this run."""

    run: str
    host: str
    pid: int
    started: float
    updated: float = 0.0
    disk_bytes: int = 0          # bytes of input read (reused parts count their size)
    tokens: int = 0              # tokens in shards written or re-verified
    new_tokens: int = 0          # of which tokenized by this run
    new_disk_bytes: int = 0      # bytes read to tokenize them (the rate's numerator)
    parts_done: int = 0


@dataclass(frozen=True)
class RunTotals:
    processes: int
    started: float
    disk_bytes: int
    tokens: int
    new_tokens: int
    new_disk_bytes: int
    parts_done: int


class WorkDir:
    """``OUT/.prepare`` for one run id."""

    def __init__(self, out: Path, run: str) -> None:
        if not _RUN_ID.fullmatch(run):
            raise DataError(f"run id {run!r} is not usable: it names files in {Path(out) / STATE_DIR}",
                            "use letters, digits, '.', '_' or '-' (at most 64)")
        self.out = Path(out)
        self.run = run
        self.state = self.out / STATE_DIR

    # ---- locking and claims ------------------------------------------------------

    @contextmanager
    def locked(self, *, setting_up: bool = False) -> Iterator[None]:
        """``setting_up``: the lock of a (re)start, taken even on a finished directory."""
        if not setting_up and not self.state.is_dir() and self.index_exists():
            # Finished and cleaned up: every locked step then sees the index and does nothing,
            # so there is nothing to protect, and taking the lock would re-create .prepare.
            yield
            return
        with self._lock_file():
            yield
        if self.index_exists():
            # A process that took the lock as the index writer removed .prepare re-created it;
            # whoever holds it last once the index exists clears it again.
            shutil.rmtree(self.state, ignore_errors=True)

    def _lock_file(self) -> ExitStack:
        """The held lock; retried when .prepare vanishes between creating it and opening the
        lock (the index writer removing it)."""
        stack = ExitStack()
        for attempt in range(LOCK_ATTEMPTS):
            try:
                stack.enter_context(file_lock(self.state / "lock"))
                return stack
            except FileNotFoundError:
                if attempt == LOCK_ATTEMPTS - 1:
                    raise
        return stack

    def claim_next_part(self, count: int) -> int | None:
        """The next unclaimed part of this run, or None once all ``count`` are handed out."""
        path = self.state / f"claims-{self.run}"
        with self.locked():
            if self.index_exists():
                return None
            try:
                following = int(path.read_text() or 0)
            except (FileNotFoundError, ValueError):
                following = 0
            if following >= count:
                return None
            path.write_text(str(following + 1))
        return following

    # ---- part markers ------------------------------------------------------------

    def _marker(self, part: int) -> Path:
        return self.state / "parts" / f"part_{part:06d}.json"

    def write_part(self, part: int, shards: list[ShardInfo]) -> bool:
        """Mark ``part`` complete; False (nothing written) once the index exists."""
        with self.locked():
            if self.index_exists():
                return False
            write_json_atomic(self._marker(part), {"part": part, "run": self.run,
                                                   "shards": [s.to_dict() for s in shards]})
        return True

    def read_part(self, part: int, *, this_run_only: bool) -> list[ShardInfo] | None:
        try:
            record = json.loads(self._marker(part).read_text())
        except (OSError, ValueError):
            return None
        if this_run_only and record.get("run") != self.run:
            return None
        try:
            return [ShardInfo.from_dict(d) for d in record["shards"]]
        except (KeyError, TypeError, ValueError):
            return None

    # ---- which files a part was read from ------------------------------------------

    def part_source_changed(self, part: int, fingerprint: str) -> bool:
        """Whether an earlier run read part ``part`` from other files (a re-downloaded one);
        records ``fingerprint`` as what this part is read from now."""
        path = self.state / "sources" / f"part_{part:06d}"
        try:
            recorded = path.read_text().strip()
        except FileNotFoundError:
            recorded = None
        if recorded != fingerprint:
            write_bytes_atomic(path, fingerprint.encode())
        return recorded is not None and recorded != fingerprint

    def forget_part(self, part: int) -> None:
        """Remove an earlier run's marker and shards of ``part``."""
        self._marker(part).unlink(missing_ok=True)
        for path in self.out.glob(part_shard_pattern(part)):
            path.unlink(missing_ok=True)

    # ---- progress ----------------------------------------------------------------

    def new_counters(self) -> Counters:
        now = time.time()
        return Counters(run=self.run, host=socket.gethostname(), pid=os.getpid(), started=now, updated=now)

    def _progress_path(self, counters: Counters) -> Path:
        return self.state / "progress" / f"{self.run}.{counters.host}.{counters.pid}.json"

    def publish(self, counters: Counters) -> None:
        counters.updated = time.time()
        with self.locked():
            if not self.index_exists():
                write_json_atomic(self._progress_path(counters), asdict(counters))

    def totals(self, own: Counters) -> RunTotals:
        """This run's counters summed over its processes (``own`` taken as it is now)."""
        everyone = {self._progress_path(own).name: asdict(own)}
        folder = self.state / "progress"
        for path in folder.glob(f"{self.run}.*.json") if folder.is_dir() else []:
            if path.name not in everyone:
                try:
                    everyone[path.name] = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
        values = list(everyone.values())
        return RunTotals(processes=len(values), started=min(v["started"] for v in values),
                         **{key: sum(int(v.get(key, 0)) for v in values)
                            for key in ("disk_bytes", "tokens", "new_tokens", "new_disk_bytes", "parts_done")})

    # ---- the end -----------------------------------------------------------------

    def index_exists(self) -> bool:
        return (self.out / INDEX).is_file()

    def finished(self) -> bool:
        """Whether the index exists, asked under the lock: the index writer lists the shards
        and writes the index while holding it, so a shard written before this answer is
        either in its listing or answered True here."""
        with self.locked():
            return self.index_exists()

    def remove_run_state(self) -> None:
        """All of ``.prepare``, once the index exists (or before starting over). The lock
        goes too: every step that takes it afterwards first sees the index, and does nothing."""
        shutil.rmtree(self.state, ignore_errors=True)
