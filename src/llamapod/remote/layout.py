"""Where llamapod keeps things on a cluster's shared file system (/fsx)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class RemoteLayout:
    """Where llamapod keeps things on the cluster's shared file system."""

    fsx_root: str

    @property
    def root(self) -> PurePosixPath:
        return PurePosixPath(self.fsx_root) / "llamapod"

    @property
    def wheels(self) -> PurePosixPath:
        return self.root / "wheels"

    @property
    def envs(self) -> PurePosixPath:
        return self.root / "envs"

    @property
    def runs(self) -> PurePosixPath:
        return self.root / "runs"

    def run_dir(self, name: str) -> PurePosixPath:
        return self.runs / name
