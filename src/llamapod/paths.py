"""Where llamapod keeps its own files (caches, state), overridable for tests."""

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
