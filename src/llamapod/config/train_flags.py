"""Reading training settings: flags (the reference FSDP example's command line) and the
``[train]`` table of ``llamapod.toml`` into a ``TrainSpec``, with what the user should be told.

The reference's flags that have no meaning for this trainer (dropout of a model that has
none, FSDP1 knobs) are accepted with a one-line warning, and stray words (what bash passes
for the seed's ``\\ # 7b: 32`` comment lines) are ignored with a warning, as the reference
ignores them. Unlike the reference, an unknown flag is an error with the closest valid one.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llamapod.config.train import _BOOL_FIELDS, RECIPES, TrainSpec, _format_value
from llamapod.errors import ConfigError


# Flags of `llamapod train` itself (cli/train.py): not training settings, but a typo of
# one of them should still be suggested.
LAUNCHER_FLAGS = ("config", "nproc", "slurm", "dry-run", "nodes", "partition", "time", "account",
                  "instance-type", "cluster", "detach", "force", "help")

# Other names the reference accepts for the same setting.
ALIASES = {"llama_intermediate_size": "intermediate_size", "learning_rate": "lr",
           "max_training_steps": "max_steps", "rotary_emb_base": "rope_theta"}

# The reference's flags that mean nothing for this trainer, the type the reference parses
# them as (a bad value is still an error), and why they have no effect here.
NO_EFFECT_FLAGS: dict[str, tuple[type, str]] = {
    "resid_pdrop": (float, "Llama has no dropout (the reference uses it only for gpt_neox)"),
    "embd_pdrop": (float, "Llama has no dropout (the reference uses it only for gpt_neox)"),
    "attn_pdrop": (float, "Llama has no dropout (the reference uses it only for gpt_neox)"),
    "summary_first_pdrop": (float, "Llama has no dropout (the reference uses it only for gpt_neox)"),
    "rotary_pct": (float, "Llama rotates every head dimension (the reference uses it only for gpt_neox)"),
    "limit_all_gathers": (int, "FSDP2 always limits in-flight all-gathers"),
    "activation_loading_horizon": (int, "it tunes FSDP1's activation offload wrapper; "
                                        "--offload_activations here needs no horizon"),
    "same_seed": (int, "every rank builds identical weights from --seed by construction, "
                       "and each rank reads its own part of the data"),
}

# Flags of the reference that describe the model: a command line naming any of them is
# written against the reference, so it gets the reference's defaults for the rest.
REFERENCE_MODEL_FLAGS = ("model_type", "hidden_width", "num_layers", "num_heads", "num_key_value_heads",
                         "intermediate_size", "max_context_width", "vocab_size")

# Presets sized for a CPU: without a model named in the reference's terms they train with
# the quickstart recipe. Every other preset is a real model and gets the reference's.
QUICKSTART_PRESETS = ("tiny", "small")

_NONE_WORDS = {"none", "null", ""}

class ParsedTrainArgs:
    """A TrainSpec and what the user should be told about how it was read."""

    def __init__(self, spec: TrainSpec, notices: list[str]) -> None:
        self.spec = spec
        self.notices = notices

def valid_flags() -> list[str]:
    return list(TrainSpec.model_fields) + list(ALIASES) + list(NO_EFFECT_FLAGS)

def _canonical(name: str) -> str:
    name = name.replace("-", "_")
    return ALIASES.get(name, name)

def _unknown(name: str, where: str) -> ConfigError:
    candidates = valid_flags() + [f.replace("-", "_") for f in LAUNCHER_FLAGS]
    close = difflib.get_close_matches(name.replace("-", "_"), candidates, n=1, cutoff=0.6)
    if close:
        match = close[0]
        shown = next((f for f in LAUNCHER_FLAGS if f.replace("-", "_") == match), match)
        hint = f"did you mean --{shown}?" if where == "flag" else f"did you mean '{shown}'?"
    else:
        hint = "see `llamapod train --help` for the list of flags"
    if where == "flag":
        return ConfigError(f"unknown flag --{name}", hint)
    return ConfigError(f"{where}: unknown setting '{name}'", hint)

def _is_option(token: str) -> bool:
    """An option name as argparse sees one: a dash, then not a number (``-1`` is a value)."""
    if not token.startswith("-") or token == "-":  # nosec B105: a command-line option prefix, not a password
        return False
    try:
        float(token)
        return False
    except ValueError:
        return True

def _split_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(flags, stray words): ['--a', '1', '--b=2', '--c', 'x'] -> {'a': '1', 'b': '2', 'c': 'x'}, [].

    A flag given without ``=`` takes the next word as its value unless that word is itself
    an option ('' = no value). Words no flag takes are stray: the reference's
    ``parse_known_args`` ignores them, and so do we, with a warning.
    """
    values: dict[str, str] = {}
    stray: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not _is_option(token):
            stray.append(token)
            i += 1
            continue
        if not token.startswith("--") or token == "--":  # nosec B105: a command-line option prefix, not a password
            raise ConfigError(f"unexpected argument '{token}'",
                              "training flags look like --name value or --name=value")
        body = token[2:]
        if "=" in body:
            name, value = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not _is_option(argv[i + 1]):
            name, value = body, argv[i + 1]
            i += 2
        else:
            name, value = body, ""
            i += 1
        key = _canonical(name)
        if key not in TrainSpec.model_fields and key not in NO_EFFECT_FLAGS:
            raise _unknown(name, "flag")
        values[key] = value
    return values, stray

def _flag_value(name: str, text: str) -> Any:
    if name in NO_EFFECT_FLAGS:
        return text
    annotation = TrainSpec.model_fields[name].annotation
    optional = "Optional" in str(annotation) or "None" in str(annotation)
    if text.strip().lower() in _NONE_WORDS and text != "" and optional:
        return None
    if text == "" and name in _BOOL_FIELDS:
        return "1"  # a bare boolean flag (`--compile`) means on
    if text == "":
        raise ConfigError(f"flag --{name} needs a value", f"write --{name} VALUE or --{name}=VALUE")
    return text

def choose_recipe(values: dict[str, Any]) -> str:
    """Which defaults fill what ``values`` (config table + flags) do not set.

    ``reference`` when the job is described in the reference's terms (any of its model
    flags) or names a real model preset: that job must train as it did there. Otherwise
    ``quickstart``, the offline main job. An explicit ``recipe`` always wins.
    """
    if values.get("recipe") is not None:
        return str(values["recipe"])
    if any(flag in values for flag in REFERENCE_MODEL_FLAGS):
        return "reference"
    preset = values.get("preset")
    if preset is not None and preset not in QUICKSTART_PRESETS:
        return "reference"
    return "quickstart"

def _no_effect_notices(values: dict[str, Any], sources: dict[str, str]) -> list[str]:
    notices = []
    for name, (kind, reason) in NO_EFFECT_FLAGS.items():
        if name not in values:
            continue
        value = values.pop(name)
        try:
            if isinstance(value, bool) or not math.isfinite(float(kind(value))):
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"{sources[name]}: must be {'a whole number' if kind is int else 'a number'} "
                              f"(got {value!r})", f"see `llamapod train --help` for --{name}") from None
        notices.append(f"{sources[name]} has no effect: {reason}")
    return notices

def _stray_notice(stray: list[str]) -> list[str]:
    if not stray:
        return []
    shown = ", ".join(repr(word) for word in stray[:8]) + (", ..." if len(stray) > 8 else "")
    return [f"ignored {len(stray)} word(s) that are not flags or flag values: {shown} "
            f"(a comment inside a bash array? the reference ignores them too)"]

def parse_train_args(argv: list[str], config_path: Path | None = None) -> TrainSpec:
    """Merge ``[train]`` of the config file (if any) with flags; flags win."""
    return read_train_args(argv, config_path).spec

def read_train_args(argv: list[str], config_path: Path | None = None) -> ParsedTrainArgs:
    """``parse_train_args`` with the notices (no-effect flags, stray words) the user should see."""
    from llamapod.config.files import load_table

    table = load_table(config_path, "train") if config_path is not None else {}
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, value in table.items():
        key = _canonical(str(name))
        if key not in TrainSpec.model_fields and key not in NO_EFFECT_FLAGS:
            raise _unknown(str(name), f"config file {config_path} [train]")
        merged[key] = value
        sources[key] = f"[train] {name} in {config_path}"
    flags, stray = _split_flags(argv)
    for key, text in flags.items():
        merged[key] = _flag_value(key, text)
        sources[key] = f"--{key}"
    notices = _no_effect_notices(merged, sources) + _stray_notice(stray)
    merged["recipe"] = choose_recipe(merged)
    return ParsedTrainArgs(build_spec(merged, sources), notices)

def build_spec(values: dict[str, Any], sources: dict[str, str] | None = None) -> TrainSpec:
    """Validate settings into a TrainSpec; the first problem becomes the error's line."""
    sources = sources or {}
    try:
        return TrainSpec(**values)
    except ValidationError as exc:
        problems = [_describe(err, sources) for err in exc.errors()]
        raise ConfigError(problems[0], _hint_for(exc.errors()[0]), problems=problems[1:]) from None

def _describe(err: dict, sources: dict[str, str]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        # Cross-field problems (shapes, min_lr > lr) already name their fields.
        return msg
    name = loc[0]
    where = sources.get(name, f"--{name}")
    value = err.get("input")
    msg = msg.replace("Input should be ", "must be ")
    msg = msg.replace("greater than or equal to ", ">= ").replace("less than or equal to ", "<= ")
    msg = msg.replace("greater than ", "> ").replace("less than ", "< ")
    msg = msg.replace("must be a finite number", "must be a finite number (not inf or nan)")
    shown = value if isinstance(value, str) and value.isprintable() else repr(value)
    return f"{where}: {msg} (got {shown})"

def _hint_for(err: dict) -> str | None:
    loc = err.get("loc", ())
    ctx = err.get("ctx") or {}
    if not loc:
        original = ctx.get("error")
        if isinstance(original, ConfigError):
            return original.hint
        return "fix the values named above"
    return f"see `llamapod train --help` for what --{loc[0]} accepts"

def flags_help() -> str:
    """The training flags with both recipes' defaults, for `llamapod train --help`."""
    lines = ["Training flags (also settable in the [train] table of llamapod.toml). Defaults are the",
             "reference FSDP example's; [quickstart: ...] is the offline main job's recipe, used when",
             "no model is named in the reference's terms (see --recipe):"]
    defaults = TrainSpec.model_construct()
    quick = RECIPES["quickstart"]
    for name, field in TrainSpec.model_fields.items():
        default = getattr(defaults, name)
        shown = "" if default is None else f" (default: {_format_value(default)})"
        if name in quick and quick[name] != default:
            shown += f" [quickstart: {_format_value(quick[name])}]"
        lines.append(f"  --{name:<24} {field.description or ''}{shown}")
    for alias, target in ALIASES.items():
        lines.append(f"  --{alias:<24} same as --{target}")
    for name, (_, reason) in NO_EFFECT_FLAGS.items():
        lines.append(f"  --{name:<24} accepted, no effect: {reason}")
    return "\n".join(lines)
