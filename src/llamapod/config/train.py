"""Training settings: the ``[train]`` table of ``llamapod.toml`` plus command-line flags.

The trainer accepts the seed's command line as written (``--max_context_width 2048
--num_layers 32 ... --bf16 1``) in both ``--flag value`` and ``--flag=value`` forms,
and rejects unknown flags with the closest valid one (the reference example silently
ignores typos, so a misspelled ``--checkpont_freq`` there trains for hours without
checkpoints). Torch-free: the Slurm renderer and the CLI import this on any machine.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llamapod.errors import ConfigError

# Flags of `llamapod train` itself (cli/train.py): not training settings, but a typo of
# one of them should still be suggested.
LAUNCHER_FLAGS = ("config", "nproc", "slurm", "dry-run", "nodes", "partition", "time", "account",
                  "instance-type", "cluster", "detach", "help")

# Older names the reference example accepts, mapped to ours.
ALIASES = {"llama_intermediate_size": "intermediate_size", "learning_rate": "lr"}

_NONE_WORDS = {"none", "null", ""}


class TrainSpec(BaseModel):
    """Every setting of a training run. Defaults are the main job (`llamapod train`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- model ---------------------------------------------------------------
    preset: str = Field("small", description="model size preset (tiny, small, llama-1b, llama2-7b, llama2-13b, "
                                             "llama2-70b, llama3-8b, llama3-70b)")
    model_type: Optional[Literal["llama_v2", "llama_v3"]] = Field(
        None, description="llama_v2 or llama_v3: rotary base of that family (overrides the preset's)")
    max_context_width: Optional[int] = Field(None, ge=2, description="sequence length (default: the preset's)")
    hidden_width: Optional[int] = Field(None, ge=2, description="model width (overrides the preset)")
    num_layers: Optional[int] = Field(None, ge=1, description="transformer blocks (overrides the preset)")
    num_heads: Optional[int] = Field(None, ge=1, description="attention heads (overrides the preset)")
    num_key_value_heads: Optional[int] = Field(None, ge=1, description="key/value heads for GQA (default: num_heads)")
    intermediate_size: Optional[int] = Field(None, ge=1, description="SwiGLU hidden size (alias --llama_intermediate_size)")
    vocab_size: Optional[int] = Field(None, ge=1, description="embedding rows (default: the tokenizer's vocabulary)")
    rope_theta: Optional[float] = Field(None, gt=0, description="rotary base (default: preset / model_type)")
    norm_eps: Optional[float] = Field(None, gt=0, description="RMSNorm epsilon (default: the preset's)")
    # --- data ----------------------------------------------------------------
    tokenizer: Optional[str] = Field(None, description="tokenizer (default: built-in BPE trained on the default corpus)")
    dataset: Optional[str] = Field(None, description="dataset (default: the Python standard library's sources)")
    dataset_config_name: Optional[str] = Field(None, description="dataset configuration name (e.g. en for c4)")
    text_field: Optional[str] = Field(None, description="text column of the dataset")
    # --- batch and schedule ----------------------------------------------------
    train_batch_size: int = Field(8, ge=1, description="sequences per device per micro-step")
    val_batch_size: int = Field(8, ge=1, description="sequences per device per validation batch")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    max_steps: int = Field(120, ge=1, description="optimizer steps")
    epochs: int = Field(3, ge=1, description="stop after this many passes over the training data")
    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    lr_decay_style: Literal["cosine", "linear", "constant"] = Field("cosine", description="cosine, linear or constant")
    min_lr: Optional[float] = Field(None, ge=0, description="learning rate at the end of the decay (default: lr / 10)")
    warmup: float = Field(0.05, ge=0, description="warmup: a fraction of max_steps (< 1) or a number of steps (>= 1)")
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm (0 = off)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only)")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2")
    seed: int = Field(12345, description="random seed (weights, data order)")
    # --- parallelism and precision ---------------------------------------------
    bf16: Optional[bool] = Field(None, description="bf16 parameters with fp32 reduction (default: on with a GPU)")
    activation_checkpointing: Literal["none", "full", "selective"] = Field(
        "none", description="none, full or selective (1 = full, 0 = none)")
    sharding_strategy: Literal["full", "hybrid"] = Field(
        "full", description="full (shard over all ranks) or hybrid (shard in a node, replicate across nodes)")
    cpu_offload: bool = Field(False, description="keep sharded parameters and optimizer state in CPU memory")
    compile: bool = Field(False, description="torch.compile each transformer block")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto (GPU when present), cpu or cuda")
    # --- logging, validation, checkpoints --------------------------------------
    logging_freq: int = Field(10, ge=1, description="log a metrics line every N steps")
    validation_freq: Optional[int] = Field(40, ge=1, description="validate every N steps (and at the end)")
    validation_batches: int = Field(10, ge=0, description="batches per validation (0 = no validation)")
    checkpoint_freq: Optional[int] = Field(40, ge=1, description="checkpoint every N steps (and at the end)")
    checkpoint_dir: Optional[str] = Field(None, description="checkpoint folder (default: <run_dir>/checkpoints)")
    resume_from_checkpoint: Optional[str] = Field(
        None, description="resume from the newest complete checkpoint in this folder (empty = start fresh)")
    keep_last: Optional[int] = Field(None, ge=1, description="keep only the newest N checkpoints")
    async_save: bool = Field(False, description="write checkpoints in the background")
    init_from: Optional[str] = Field(None, description="start from a Hugging Face Llama folder (safetensors)")
    run_dir: Optional[str] = Field(None, description="folder for metrics.jsonl and metrics.png (default: runs/<time>)")

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _checkpointing_from_int(cls, value: Any) -> Any:
        # The reference takes --activation_checkpointing 1/0.
        mapping = {"1": "full", "0": "none", "true": "full", "false": "none"}
        if isinstance(value, bool) or isinstance(value, int):
            return "full" if value else "none"
        if isinstance(value, str):
            return mapping.get(value.strip().lower(), value.strip().lower())
        return value

    @field_validator("bf16", "cpu_offload", "compile", "async_save", mode="before")
    @classmethod
    def _bool_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be 1 or 0 (true or false)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TrainSpec":
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must not exceed lr ({self.lr:g})")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise ValueError(f"warmup {self.warmup:g} must be a fraction below 1 or a whole number of steps")
        resolve_model_args(self)
        return self

    # --- derived values ------------------------------------------------------

    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def warmup_steps(self) -> int:
        return int(self.warmup) if self.warmup >= 1 else int(round(self.warmup * self.max_steps))

    def effective_checkpoint_dir(self, run_dir: str) -> str:
        return self.checkpoint_dir or str(Path(run_dir) / "checkpoints")

    def to_cli_args(self) -> list[str]:
        """Flags (``--name=value``) that rebuild this spec in ``python -m llamapod.train``."""
        args = []
        defaults = TrainSpec.model_construct()
        for name in TrainSpec.model_fields:
            value = getattr(self, name)
            if value == getattr(defaults, name):
                continue
            args.append(f"--{name}={_format_value(value)}")
        return args


def _format_value(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def resolve_model_args(spec: TrainSpec, vocab_size: int | None = None):
    """The preset with the spec's explicit size flags applied; raises ConfigError on a bad shape.

    ``vocab_size`` is the tokenizer's; --vocab_size, when given, must be at least that.
    """
    from llamapod.train.presets import MODEL_TYPE_ROPE_THETA, check_shape, get_preset

    base = get_preset(spec.preset)
    changes: dict[str, Any] = {}
    for flag, field in (("hidden_width", "dim"), ("num_layers", "n_layers"), ("num_heads", "n_heads"),
                        ("intermediate_size", "ffn_dim"), ("norm_eps", "norm_eps")):
        value = getattr(spec, flag)
        if value is not None:
            changes[field] = value
    heads = changes.get("n_heads", base.n_heads)
    if spec.num_key_value_heads is not None:
        changes["n_kv_heads"] = spec.num_key_value_heads
    elif "n_heads" in changes:
        # Heads given by hand without kv heads: plain multi-head attention, as the reference does.
        changes["n_kv_heads"] = heads
    if spec.model_type is not None:
        changes["rope_theta"] = MODEL_TYPE_ROPE_THETA[spec.model_type]
    if spec.rope_theta is not None:
        changes["rope_theta"] = spec.rope_theta
    if spec.max_context_width is not None:
        changes["max_seq_len"] = spec.max_context_width
    if vocab_size is not None:
        if spec.vocab_size is not None and spec.vocab_size < vocab_size:
            raise ConfigError(f"--vocab_size {spec.vocab_size} is smaller than the tokenizer's vocabulary ({vocab_size})",
                              "drop --vocab_size (it defaults to the tokenizer's) or raise it")
        changes["vocab_size"] = spec.vocab_size or vocab_size
    elif spec.vocab_size is not None:
        changes["vocab_size"] = spec.vocab_size
    args = base.replace(**changes)
    check_shape(args)
    return args


# ---- parsing ------------------------------------------------------------------------


def valid_flags() -> list[str]:
    return list(TrainSpec.model_fields) + list(ALIASES)


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


def _split_flags(argv: list[str]) -> dict[str, str]:
    """['--a', '1', '--b=2', '--c'] -> {'a': '1', 'b': '2', 'c': ''} ('' = given without a value)."""
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument '{token}'",
                              "training flags look like --name value or --name=value")
        body = token[2:]
        if "=" in body:
            name, value = body.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            name, value = body, argv[i + 1]
            i += 2
        else:
            name, value = body, ""
            i += 1
        key = _canonical(name)
        if key not in TrainSpec.model_fields:
            raise _unknown(name, "flag")
        values[key] = value
    return values


def _flag_value(name: str, text: str) -> Any:
    annotation = TrainSpec.model_fields[name].annotation
    optional = "Optional" in str(annotation) or "None" in str(annotation)
    if text.strip().lower() in _NONE_WORDS and text != "" and optional:
        return None
    if text == "" and name in ("bf16", "cpu_offload", "compile", "async_save"):
        return "1"  # a bare boolean flag (`--compile`) means on
    if text == "":
        raise ConfigError(f"flag --{name} needs a value", f"write --{name} VALUE or --{name}=VALUE")
    return text


def parse_train_args(argv: list[str], config_path: Path | None = None) -> TrainSpec:
    """Merge ``[train]`` of the config file (if any) with flags; flags win."""
    from llamapod.config.files import load_table

    table = load_table(config_path, "train") if config_path is not None else {}
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, value in table.items():
        key = _canonical(str(name))
        if key not in TrainSpec.model_fields:
            raise _unknown(str(name), f"config file {config_path} [train]")
        merged[key] = value
        sources[key] = f"[train] {name} in {config_path}"
    for key, text in _split_flags(argv).items():
        merged[key] = _flag_value(key, text)
        sources[key] = f"--{key}"
    return build_spec(merged, sources)


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
    shown = value if isinstance(value, str) else repr(value)
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
    """The training flags with their defaults, for `llamapod train --help`."""
    lines = ["Training flags (also settable in the [train] table of llamapod.toml):"]
    defaults = TrainSpec.model_construct()
    for name, field in TrainSpec.model_fields.items():
        default = getattr(defaults, name)
        shown = "" if default is None else f" (default: {_format_value(default)})"
        lines.append(f"  --{name:<24} {field.description or ''}{shown}")
    lines.append("  --llama_intermediate_size  same as --intermediate_size")
    lines.append("  --learning_rate            same as --lr")
    return "\n".join(lines)
