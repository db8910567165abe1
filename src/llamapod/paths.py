"""Where llamapod keeps its own files (caches, state), overridable for tests."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``$LLAMAPOD_HOME``, else ``~/.llamapod``: tokenizer cache, CPU peak probe, cluster state."""
    env = os.environ.get("LLAMAPOD_HOME")
    return Path(env).expanduser() if env else Path.home() / ".llamapod"


def cache_dir() -> Path:
    path = home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
