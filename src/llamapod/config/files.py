"""Reading ``llamapod.toml``.

The file has one table per concern (``[cluster]``, ``[train]``, ``[slurm]``, ...);
each concern validates its own table. This module only finds, reads and parses the
file, with one-line errors that name the file and line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from llamapod.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_NAME = "llamapod.toml"


def default_config_path() -> Path | None:
    """``$LLAMAPOD_CONFIG`` or ``./llamapod.toml`` when it exists, else None."""
    env = os.environ.get("LLAMAPOD_CONFIG")
    if env:
        return Path(env)
    candidate = Path.cwd() / DEFAULT_CONFIG_NAME
    return candidate if candidate.is_file() else None


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist",
                          "check the path, or run `llamapod init` to write one")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory", "pass the path of the llamapod.toml file inside it")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}",
                          "check the file's permissions") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}",
                          "fix the syntax at the line shown (strings need quotes, tables [name])") from None


def load_table(path: str | os.PathLike[str] | None, table: str) -> dict[str, Any]:
    """The ``[table]`` part of a config file, or {} when there is no file or no table."""
    if path is None:
        return {}
    data = load_toml(path)
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: `{table}` must be a table ([{table}]), not a value",
                          f"write it as a [{table}] section")
    return section


def format_validation_errors(exc: Any, prefix: str = "") -> list[str]:
    """pydantic ValidationError -> one readable line per problem ("train.lr: must be > 0")."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        msg = err.get("msg", "invalid value")
        msg = msg.removeprefix("Value error, ")
        value = err.get("input")
        shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) and len(repr(value)) < 60 else ""
        lines.append(f"{where}: {msg}{shown}" if where else f"{msg}{shown}")
    return lines
