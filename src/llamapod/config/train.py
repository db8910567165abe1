"""Training settings: ``TrainSpec``, every setting of a run, with the reference's defaults.

The settings are the reference FSDP example's (awsome-distributed-training ``10.FSDP``
``model_utils/arguments.py``), with its defaults: a command line pasted from there, or from
the seed guide, trains exactly what it trained there (lr 1e-4, activation checkpointing on,
5000 steps, ...). The offline main job (``llamapod train`` with no flags) has tuned values of
its own, kept as the named recipe ``quickstart`` (``train_flags.choose_recipe`` says when it
applies). Reading flags and the ``[train]`` table is ``train_flags``. Torch-free: the Slurm
renderer and the CLI import this on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llamapod.errors import ConfigError


RECIPES: dict[str, dict[str, Any]] = {
    # The reference's defaults are the flag defaults (the fields' defaults below).
    "reference": {},
    # The main job: learns Python source visibly in about two minutes on 2 CPU cores.
    "quickstart": {
        "preset": "small", "dataset": "default", "tokenizer": "default", "train_batch_size": 8,
        "val_batch_size": 8, "max_steps": 120, "lr": 2e-3, "min_lr": None, "warmup": 0.05,
        "weight_decay": 0.1, "activation_checkpointing": "none", "logging_freq": 10,
        "validation_freq": 40, "checkpoint_freq": 40,
    },
}

_BOOL_FIELDS = ("bf16", "cpu_offload", "compile", "async_save", "offload_activations")


class TrainSpec(BaseModel):
    """Every setting of a training run. Field defaults are the reference's (recipe ``reference``)."""

    # Inf and NaN make no sense in any setting here (an inf learning rate trains on NaN).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    recipe: Literal["reference", "quickstart"] = Field(
        "reference", description="defaults for what is not given: reference (the reference FSDP example's) or "
                                 "quickstart (the offline main job)")
    # --- model ---------------------------------------------------------------
    preset: str = Field("reference-default", description="model size preset (tiny, small, llama-1b, llama2-7b, "
                                                         "llama2-13b, llama2-70b, llama3-8b, llama3-70b, "
                                                         "reference-default)")
    model_type: Optional[Literal["llama_v2", "llama_v3"]] = Field(
        None, description="llama_v2 or llama_v3: rotary base of that family (overrides the preset's)")
    max_context_width: Optional[int] = Field(None, ge=2, description="sequence length (default: the preset's)")
    hidden_width: Optional[int] = Field(None, ge=2, description="model width (overrides the preset)")
    num_layers: Optional[int] = Field(None, ge=1, description="transformer blocks (overrides the preset)")
    num_heads: Optional[int] = Field(None, ge=1, description="attention heads (overrides the preset)")
    num_key_value_heads: Optional[int] = Field(None, ge=1, description="key/value heads for GQA (default: num_heads)")
    intermediate_size: Optional[int] = Field(None, ge=1, description="SwiGLU hidden size (alias --llama_intermediate_size)")
    vocab_size: Optional[int] = Field(None, ge=1, description="embedding rows (default: the tokenizer's vocabulary)")
    rope_theta: Optional[float] = Field(None, gt=0, description="rotary base (alias --rotary_emb_base; "
                                                               "default: preset / model_type)")
    norm_eps: Optional[float] = Field(None, gt=0, description="RMSNorm epsilon (default: the preset's)")
    initializer_range: float = Field(0.02, gt=0, description="standard deviation of the initial weights")
    # --- data ----------------------------------------------------------------
    tokenizer: str = Field("EleutherAI/gpt-neox-20b", description="tokenizer: a file, a folder, a hub id, or "
                                                                 "'default' (built-in BPE of the default corpus)")
    dataset: str = Field("allenai/c4", description="dataset: files, a folder, a hub id, or 'default' "
                                                   "(the Python standard library's sources)")
    dataset_config_name: Optional[str] = Field(None, description="dataset configuration name "
                                                                 "(default: en for allenai/c4)")
    text_field: Optional[str] = Field(None, description="text column of the dataset")
    train_split: str = Field("train", description="split of a hub dataset to train on")
    val_split: str = Field("train", description="split of a hub dataset to validate on (the train split: "
                                                "held-out documents of it)")
    n_samples_train: Optional[int] = Field(None, ge=1, description="use only the first N documents for training")
    n_samples_val: Optional[int] = Field(None, ge=1, description="use only the first N documents of --val_split "
                                                                 "when it differs from --train_split")
    # --- batch and schedule ----------------------------------------------------
    train_batch_size: int = Field(2, ge=1, description="sequences per device per micro-step")
    val_batch_size: int = Field(4, ge=1, description="sequences per device per validation batch")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    max_steps: int = Field(5000, ge=1, description="optimizer steps (alias --max_training_steps)")
    epochs: int = Field(3, ge=1, description="stop after this many passes over the training data")
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    lr_decay_style: Literal["cosine", "linear", "constant", "exponential", "plateau"] = Field(
        "cosine", description="cosine, linear, constant, exponential (halves over the decay) or plateau "
                              "(constant for --plateau, then linear)")
    lr_decay_iters: Optional[int] = Field(None, ge=1, description="steps to decay over (default: max_steps)")
    min_lr: Optional[float] = Field(1e-5, ge=0, description="learning rate at the end of the decay (None: lr / 10)")
    warmup: float = Field(0.0032, ge=0, description="warmup: a fraction of the decay steps (< 1) or a number of "
                                                    "steps (>= 1)")
    plateau: float = Field(0.0, ge=0, le=1, description="with --lr_decay_style plateau: fraction of the decay "
                                                        "steps held at lr after warmup")
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm (0 = off)")
    weight_decay: float = Field(0.2, ge=0, description="AdamW weight decay (matrices only)")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2")
    seed: int = Field(12345, description="random seed (weights, data order)")
    # --- parallelism and precision ---------------------------------------------
    bf16: Optional[bool] = Field(None, description="bf16 parameters with fp32 reduction (default: on with a GPU, "
                                                   "as the reference's 1 on its GPUs)")
    activation_checkpointing: Literal["none", "full", "selective"] = Field(
        "full", description="none, full or selective (1 = full, 0 = none)")
    offload_activations: bool = Field(False, description="keep activations saved for backward in CPU memory")
    sharding_strategy: Literal["full", "hybrid"] = Field(
        "full", description="full (shard over all ranks) or hybrid (shard in a node, replicate across nodes)")
    cpu_offload: bool = Field(False, description="keep sharded parameters and optimizer state in CPU memory")
    compile: bool = Field(False, description="torch.compile each transformer block")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto (GPU when present), cpu or cuda")
    # --- logging, validation, checkpoints --------------------------------------
    logging_freq: int = Field(1, ge=1, description="log a metrics line every N steps")
    tensorboard_dir: Optional[str] = Field(None, description="also write TensorBoard event files here")
    validation_freq: Optional[int] = Field(None, ge=1, description="validate every N steps (and at the end)")
    validation_batches: int = Field(10, ge=0, description="batches per validation (0 = no validation)")
    checkpoint_freq: Optional[int] = Field(1000, ge=1, description="checkpoint every N steps (and at the end)")
    checkpoint_dir: Optional[str] = Field(None, description="checkpoint folder (default: <run_dir>/checkpoints)")
    resume_from_checkpoint: Optional[str] = Field(
        None, description="resume from the newest complete checkpoint in this folder (empty = start fresh)")
    keep_last: Optional[int] = Field(None, ge=1, description="keep only the newest N checkpoints")
    async_save: bool = Field(False, description="write checkpoints in the background")
    init_from: Optional[str] = Field(None, description="start from a Hugging Face Llama folder (safetensors)")
    run_dir: Optional[str] = Field(None, description="folder for metrics.jsonl and metrics.png (default: runs/<time>)")

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        """Fill what is not given from the recipe's values (the reference's are the field defaults)."""
        if isinstance(data, dict) and data.get("recipe") in RECIPES:
            data = {**RECIPES[data["recipe"]], **data}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info) -> Any:
        # pydantic turns true into 1: `max_steps = true` must not train for one step.
        if isinstance(value, bool) and info.field_name not in _BOOL_FIELDS:
            annotation = str(cls.model_fields[info.field_name].annotation)
            if "int" in annotation or "float" in annotation:
                raise ValueError("must be a number, not true/false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        # Paths and names go into sbatch scripts, shells and file names.
        if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must not contain control characters (newline, tab, escape)")
        return value

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

    @field_validator(*_BOOL_FIELDS, mode="before")
    @classmethod
    def _bool_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in ("1", "true", "yes", "on"):
                return True
            if word in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be 1 or 0 (true or false)")
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)  # the reference's --bf16 1 / --cpu_offload 0, also in TOML
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TrainSpec":
        if self.min_lr is not None and self.min_lr > self.lr and "min_lr" in self.model_fields_set:
            raise ValueError(f"min_lr ({self.min_lr:g}) must not exceed lr ({self.lr:g})")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise ValueError(f"warmup {self.warmup:g} must be a fraction below 1 or a whole number of steps")
        resolve_model_args(self)
        return self

    # --- derived values ------------------------------------------------------

    def final_lr(self) -> float:
        """Where the decay ends; a default min_lr above a small --lr is clipped to it."""
        return min(self.lr, self.lr / 10 if self.min_lr is None else self.min_lr)

    def decay_steps(self) -> int:
        return self.lr_decay_iters or self.max_steps

    def warmup_steps(self) -> int:
        """Warmup as steps; a fraction is of the decay steps, as in the reference."""
        return int(self.warmup) if self.warmup >= 1 else int(round(self.warmup * self.decay_steps()))

    def plateau_steps(self) -> int:
        return int(round(self.plateau * self.decay_steps())) if self.lr_decay_style == "plateau" else 0

    def effective_checkpoint_dir(self, run_dir: str) -> str:
        return self.checkpoint_dir or str(Path(run_dir) / "checkpoints")

    def effective_dataset_config_name(self) -> Optional[str]:
        # The reference's c4 needs its "en" configuration; name it for the user.
        if self.dataset_config_name is None and self.dataset in ("allenai/c4", "c4"):
            return "en"
        return self.dataset_config_name

    def to_cli_args(self) -> list[str]:
        """Flags (``--name=value``) that rebuild this spec in ``python -m llamapod worker``.

        The recipe comes first; then every setting that differs from the recipe's value, and
        the data and tokenizer whenever they were named: a named one is never replaced by the
        offline fallback (see ``train.loop.with_reachable_defaults``).
        """
        args = [f"--recipe={self.recipe}"]
        defaults = TrainSpec.model_construct(**RECIPES[self.recipe])
        for name in TrainSpec.model_fields:
            if name == "recipe":
                continue
            value = getattr(self, name)
            named = (name in ("dataset", "tokenizer") and name in self.model_fields_set
                     and value == TrainSpec.model_fields[name].default)
            if value == getattr(defaults, name) and not named:
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
    from llamapod.shapes import MODEL_TYPE_ROPE_THETA, check_shape, get_preset

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


