"""pydantic's validation errors, phrased as the rule a user must follow.

A settings model states each rule once, on the field: constraints pydantic checks (types,
ranges, lengths, literals) and the rule in words as the field's ``description``
("must be 1 or 2 (1 turns hyperthreading off)"). Whatever pydantic finds wrong with a field,
the user reads that rule, where the setting is and what was given:
``cluster.threads_per_core must be 1 or 2 (1 turns hyperthreading off) (got 3)``.

Validators that know a sharper rule than the description (a rule that depends on another
setting, or a hint such as "did you mean") raise ``broken_rule``; rules about several
settings at once raise ``problem`` with a whole sentence; a validator with several findings
raises them all with ``raise_all``. ``problems`` turns every error pydantic collected, in
one pass over the table, into those lines.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Callable, Iterable, Sequence

from pydantic import AfterValidator, BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

RULE = "llamapod_rule"  # message: "must ..." with what was given; the setting's path goes before it
PROBLEM = "llamapod_problem"  # message: a whole sentence that names the settings itself

_TABLE_TYPES = ("model_type", "model_attributes_type", "dict_type")
_CONSEQUENCES = ("default_factory_not_called",)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DICT_KEY = "[key]"  # pydantic's location of a bad key (not value) of a dict


# ---- raising ----------------------------------------------------------------------


def got(value: Any, hint: str = "") -> str:
    """`` (got 'x')``, shortened for long values, with ``hint`` (e.g. "; did you mean y?") inside."""
    text = repr(value)
    if len(text) > 60:
        size = f", {len(value)} characters" if isinstance(value, str) else ""
        text = f"{text[:40]}...{size}"
    return f" (got {text}{hint})"


def closest(value: Any, choices: Iterable[str]) -> str:
    """``; did you mean X?`` for the choice closest to a misspelt ``value`` (or nothing)."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def broken_rule(rule: str, value: Any, *, hint: str = "", secret: bool = False) -> PydanticCustomError:
    """The error for ``value`` breaking ``rule`` ("must be ..."); a secret value is never shown."""
    shown = " (got a value that breaks it)" if secret else got(value, hint)
    return PydanticCustomError(RULE, "{rule}{shown}", {"rule": rule, "shown": shown})


def problem(sentence: str) -> PydanticCustomError:
    return PydanticCustomError(PROBLEM, "{sentence}", {"sentence": sentence})


def raise_all(findings: Sequence[tuple[tuple[str | int, ...], PydanticCustomError, Any]]) -> None:
    """Raise every (location, error, value) at once; pydantic files them under the validated field."""
    if findings:
        raise ValidationError.from_exception_data(
            "findings", [InitErrorDetails(type=error, loc=loc, input=value) for loc, error, value in findings])


def full_match(pattern: re.Pattern[str]) -> AfterValidator:
    """The whole string matches ``pattern`` (a trailing newline is not forgiven, as ``$`` would);
    a mismatch reads as the field's rule."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError("does not match")
        return value

    return AfterValidator(check)


def rule_of(problem_of: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    """A validator from a function that names the rule a value breaks (None when it breaks none),
    such as the rules the nodes apply in ``llamapod.lifecycle.provisioning``."""

    def check(value: Any) -> Any:
        rule = problem_of(value)
        if rule:
            raise broken_rule(f"must be {rule}", value)
        return value

    return check


# ---- phrasing ---------------------------------------------------------------------


def problems(exc: ValidationError, model: type[BaseModel], table: Any, root: str) -> list[str]:
    """One line per problem pydantic found validating ``table`` as ``model``, in the order found.

    ``root`` is the name of the table (``cluster``), the start of every setting's path.
    """
    errors = exc.errors(include_url=False)
    lines: list[str] = []
    for error in errors:
        if _follows_from_others(error, errors):
            continue
        line = _phrase(error, model, table, root)
        if line not in lines:
            lines.append(line)
    return lines


def _follows_from_others(error: dict[str, Any], errors: list[dict[str, Any]]) -> bool:
    """An error that only repeats others: a default computed from a wrong setting, or a list
    "too short" only because its wrong items were left out (pydantic counts the valid ones)."""
    if error["type"] in _CONSEQUENCES:
        return True
    if error["type"] != "too_short":
        return False
    loc = tuple(error["loc"])
    return any(len(other["loc"]) > len(loc) and tuple(other["loc"][:len(loc)]) == loc for other in errors)


def _phrase(error: dict[str, Any], model: type[BaseModel], table: Any, root: str) -> str:
    kind, loc = error["type"], _key_location(tuple(error["loc"]))
    if kind == PROBLEM:
        return error["msg"]
    where = path(root, loc)
    if kind == RULE:
        return f"{where} {error['msg']}"
    if kind == "extra_forbidden":
        known = list(_model_at(model, loc[:-1]).model_fields)
        return f"{where} is not a setting llamapod knows (known: {', '.join(known)}){closest(str(loc[-1]), known)}"
    if kind == "missing":
        return f"{where} must be set"
    if kind in _TABLE_TYPES:
        return f"{where} must be a table ([{where}]){got(error['input'])}"
    depth, rule = _rule_at(model, loc)
    if rule is None:  # a field without a stated rule: pydantic's own words are still one line
        return f"{where}: {error['msg']}{got(error['input'])}"
    value = error["input"] if depth == len(loc) else _value_at(table, loc[:depth])
    return f"{path(root, loc[:depth])} {rule}{got(value)}"


def _key_location(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """pydantic puts a bad dict key at (..., the key, "[key]"); the rule is the dict's rule for keys."""
    if _DICT_KEY in loc:
        at = loc.index(_DICT_KEY)
        return loc[:at - 1] + loc[at:]
    return loc


def path(root: str, loc: Sequence[str | int]) -> str:
    """``cluster.workers[0].count``; a key that is not a plain word is quoted (``cluster.tags['a b']``),
    so that a key holding a newline still reads on one line; a bad dict key is ``cluster.tags keys``."""
    text = root
    for part in loc:
        if part == _DICT_KEY:
            text += " keys"
        elif isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if _PLAIN_KEY.fullmatch(part) else f"[{part!r}]"
    return text


def _value_at(table: Any, loc: Sequence[str | int]) -> Any:
    for part in loc:
        try:
            table = table[part]
        except (KeyError, IndexError, TypeError):
            return None
    return table


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel]:
    kind: Any = model
    for part in loc:
        kind = _step(_unwrap(kind)[0], part)
    return _unwrap(kind)[0]


def _rule_at(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[int, str | None]:
    """The innermost rule along ``loc`` and how many parts of ``loc`` lead to it.

    An error inside a list of plain values (``deep_health_checks[1]``) is reported against
    the list, whose rule it breaks; inside a list of tables, against the table's setting.
    """
    depth, rule = 0, None
    kind: Any = model
    for i, part in enumerate(loc):
        kind, description = _unwrap(_step(_unwrap(kind)[0], part))
        if kind is None:
            break
        if description:
            depth, rule = i + 1, description
    return depth, rule


def _step(kind: Any, part: str | int) -> Any:
    """The type found one step into ``kind`` at ``part`` (a field, an index, a dict key or value)."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        field = kind.model_fields.get(str(part))
        return field if field is not None else None
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin in (tuple, list) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[0] if part == _DICT_KEY else args[1]
    return None


def _unwrap(kind: Any) -> tuple[Any, str | None]:
    """(the type, the rule stated on it) with Annotated, Optional and a field's info taken off."""
    description = None
    if isinstance(kind, FieldInfo):
        description, kind = kind.description, kind.annotation
    while True:
        origin = typing.get_origin(kind)
        if origin is typing.Annotated:
            kind, *extras = typing.get_args(kind)
            description = next((x.description for x in extras if isinstance(x, FieldInfo) and x.description),
                               description)
        elif origin in (typing.Union, types.UnionType):
            arms = [a for a in typing.get_args(kind) if a is not type(None)]
            if len(arms) != 1:
                return kind, description
            kind = arms[0]
        else:
            return kind, description
