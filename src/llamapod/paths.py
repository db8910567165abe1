"""Where llamapod keeps its own files (caches, state), overridable for tests; and paths that lead nowhere."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$LLAMAPOD_HOME``, else ``~/.llamapod``: tokenizer cache, CPU peak probe, cluster state."""
    env = os.environ.get("LLAMAPOD_HOME")
    path = Path(env).expanduser() if env else Path.home() / ".llamapod"
    if path.exists() and not path.is_dir():
        from llamapod.errors import ConfigError

        where = "LLAMAPOD_HOME" if env else "llamapod's folder"
        raise ConfigError(f"{where} {path} is a file, not a folder",
                          "move the file away, or set LLAMAPOD_HOME to a folder")
    return path


def cache_dir() -> Path:
    path = home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def dead_link(filename: object) -> str | None:
    """The first symbolic link on ``filename``'s path that leads nowhere or round in a loop, if any.

    mkdir and open then fail with EEXIST, ENOTDIR or ELOOP, whose own words name the wrong cause.
    """
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return None
    parts = os.path.abspath(os.fsdecode(filename)).split(os.sep)
    for end in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:end])
        if os.path.islink(prefix) and not os.path.exists(prefix):
            return prefix
    return None
