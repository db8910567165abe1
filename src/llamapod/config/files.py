"""Reading ``llamapod.toml``.

The file has one table per concern (``[cluster]``, ``[train]``, ``[slurm]``, ...);
each concern validates its own table. This module only finds, reads and parses the
file, with one-line errors that name the file and line.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any

from llamapod import validate
from llamapod.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_NAME = "llamapod.toml"
# The tables of llamapod.toml, each validated by its own module.
KNOWN_TABLES = ("cluster", "train", "slurm", "remote")


def default_config_path() -> Path | None:
    """``$LLAMAPOD_CONFIG`` or ``./llamapod.toml`` when it exists, else None."""
    env = os.environ.get("LLAMAPOD_CONFIG")
    if env:
        return Path(env)
    candidate = Path.cwd() / DEFAULT_CONFIG_NAME
    return candidate if candidate.is_file() else None


def display_path(path: str | os.PathLike[str]) -> str:
    """A path for a one-line message: as typed, or as repr when it holds a newline or other control character."""
    text = os.fspath(path)
    return text if not validate.has_control_characters(text) else repr(text)


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into a ConfigError naming the file."""
    path = Path(path)
    shown = display_path(path)
    if not path.exists():
        raise ConfigError(f"config file {shown} does not exist",
                          "check the path, or run `llamapod init` to write one")
    if path.is_dir():
        raise ConfigError(f"config file {shown} is a directory", "pass the path of the llamapod.toml file inside it")
    if not path.is_file():
        # A FIFO or a device would block the read (or never end).
        raise ConfigError(f"config file {shown} is not a regular file", "pass the path of a llamapod.toml file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {shown}: {exc.strerror}",
                          "check the file's permissions") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {shown} is not UTF-8 text", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {shown} is not valid TOML: {exc}",
                          "fix the syntax at the line shown (strings need quotes, tables [name])") from None


def load_table(path: str | os.PathLike[str] | None, table: str) -> dict[str, Any]:
    """The ``[table]`` part of a config file, or {} when there is no file or no table.

    Whichever table a command reads, the file's other top-level names are checked too:
    a misspelt ``[clustr]`` would otherwise be ignored and ``up`` would build the default
    cluster instead of the one the user described.
    """
    if path is None:
        return {}
    data = load_toml(path)
    check_top_level(data, path)
    shown = display_path(path)
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {shown}: `{table}` must be a table ([{table}]), not a value",
                          f"write it as a [{table}] section")
    return section


def check_top_level(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Every top-level name of the file must be one of the tables llamapod reads."""
    problems = [_unknown_top_level(name, data[name]) for name in data if name not in KNOWN_TABLES]
    if problems:
        shown = display_path(path)
        tables = ", ".join(f"[{name}]" for name in KNOWN_TABLES)
        raise ConfigError(f"config file {shown}: {problems[0]}", f"llamapod.toml holds only the tables {tables}",
                          problems=problems[1:])


def _unknown_top_level(name: str, value: Any) -> str:
    shown = f"[{name}]" if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f"[{name!r}]"
    close = difflib.get_close_matches(name, KNOWN_TABLES, n=1, cutoff=0.6)
    suggestion = f"; did you mean [{close[0]}]?" if close else ""
    if isinstance(value, dict):
        return f"unknown table {shown}{suggestion}"
    return f"{shown[1:-1]} is set outside any table (llamapod reads settings only inside its tables){suggestion}"


def format_validation_errors(exc: Any, prefix: str = "") -> list[str]:
    """pydantic ValidationError -> one readable line per problem ("train.lr: must be > 0")."""
    lines = []
    for err in exc.errors():
        loc = ".".join(_plain_key(p) for p in err.get("loc", ()) if p != "__root__")
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        msg = err.get("msg", "invalid value")
        msg = msg.removeprefix("Value error, ")
        value = err.get("input")
        shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) and len(repr(value)) < 60 else ""
        lines.append(f"{where}: {msg}{shown}" if where else f"{msg}{shown}")
    return lines


def _plain_key(part: Any) -> str:
    # A quoted TOML key may hold a newline: shown as repr, the message stays one line.
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else repr(text)
