"""Training flags and the [train] table: the seed's command line, overrides, exact errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamapod.config.train import TrainSpec, flags_help, parse_train_args, resolve_model_args
from llamapod.errors import ConfigError

SEED_7B = ("--max_context_width=2048 --num_key_value_heads=32 --llama_intermediate_size=11008 --hidden_width=4096 "
           "--num_layers=32 --num_heads=32 --model_type=llama_v2 --tokenizer=hf-internal-testing/llama-tokenizer "
           "--checkpoint_freq=500 --validation_freq=500 --checkpoint_dir=./checkpoints --train_batch_size=1 "
           "--val_batch_size=4 --epochs=1 --validation_batches=1 --resume_from_checkpoint=./checkpoints").split()


def _error(argv: list[str], config: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_train_args(argv, config_path=config)
    return info.value


def test_seed_command_line_builds_llama2_7b():
    spec = parse_train_args(SEED_7B)
    assert spec.train_batch_size == 1 and spec.checkpoint_dir == "./checkpoints" and spec.epochs == 1
    args = resolve_model_args(spec, vocab_size=32000)
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.ffn_dim, args.max_seq_len) == (
        4096, 32, 32, 32, 11008, 2048)
    assert args.rope_theta == 1e4


def test_space_and_equals_forms_and_int_booleans_agree():
    a = parse_train_args(["--lr", "3e-4", "--bf16", "1", "--activation_checkpointing", "1", "--cpu_offload", "0"])
    b = parse_train_args(["--lr=3e-4", "--bf16=true", "--activation_checkpointing=full", "--cpu_offload=false"])
    assert a == b
    assert a.bf16 is True and a.activation_checkpointing == "full" and a.cpu_offload is False
    assert parse_train_args(["--compile"]).compile is True
    assert parse_train_args(["--num_key_value_heads", "None"]).num_key_value_heads is None


def test_to_cli_args_round_trips_in_a_stable_order():
    spec = parse_train_args(SEED_7B + ["--lr", "1e-4", "--bf16", "0", "--preset", "llama2-7b"])
    args = spec.to_cli_args()
    assert args[:3] == ["--preset=llama2-7b", "--model_type=llama_v2", "--max_context_width=2048"]
    assert "--lr=0.0001" in args and "--bf16=0" in args
    assert parse_train_args(args) == spec
    assert TrainSpec().to_cli_args() == []


def test_config_table_then_flags_override(tmp_path):
    config = tmp_path / "llamapod.toml"
    config.write_text('[train]\npreset = "tiny"\nmax_steps = 50\nlr = 1e-3\nllama_intermediate_size = 96\n')
    spec = parse_train_args(["--max_steps", "7"], config_path=config)
    assert (spec.preset, spec.max_steps, spec.lr, spec.intermediate_size) == ("tiny", 7, 1e-3, 96)


def test_model_type_llama_v3_sets_its_rotary_base():
    spec = parse_train_args(["--preset", "llama2-7b", "--model_type", "llama_v3"])
    assert resolve_model_args(spec, 32000).rope_theta == 5e5


@pytest.mark.parametrize("argv, message, hint", [
    (["--max_steps", "-5"], "--max_steps: must be >= 1 (got -5)",
     "see `llamapod train --help` for what --max_steps accepts"),
    (["--lr", "fast"], "--lr: must be a valid number, unable to parse string as a number (got fast)",
     "see `llamapod train --help` for what --lr accepts"),
    (["--checkpont_freq", "10"], "unknown flag --checkpont_freq", "did you mean --checkpoint_freq?"),
    (["--nprocs", "2"], "unknown flag --nprocs", "did you mean --nproc?"),
    (["--hidden_width", "100", "--num_heads", "7"], "hidden width 100 is not divisible by num_heads 7",
     "pick --num_heads that divides --hidden_width (head size = hidden_width / num_heads)"),
    (["--num_heads", "8", "--num_key_value_heads", "3"], "num_heads 8 is not divisible by num_key_value_heads 3",
     "pick --num_key_value_heads that divides --num_heads (each key/value head serves a group of query heads)"),
    (["--preset", "llama2-8b"], "unknown preset 'llama2-8b'",
     "did you mean 'llama3-8b'? choose one of: tiny, small, llama-1b, llama2-7b, llama2-13b, llama2-70b, "
     "llama3-8b, llama3-70b"),
    (["--bf16", "2"], "--bf16: must be 1 or 0 (true or false) (got 2)",
     "see `llamapod train --help` for what --bf16 accepts"),
    (["--sharding_strategy", "zero3"], "--sharding_strategy: must be 'full' or 'hybrid' (got zero3)",
     "see `llamapod train --help` for what --sharding_strategy accepts"),
    (["--lr", "1e-3", "--min_lr", "1e-2"], "min_lr (0.01) must not exceed lr (0.001)", "fix the values named above"),
    (["stray"], "unexpected argument 'stray'", "training flags look like --name value or --name=value"),
    (["--lr"], "flag --lr needs a value", "write --lr VALUE or --lr=VALUE"),
])
def test_bad_flags_give_one_exact_line(argv, message, hint):
    error = _error(argv)
    assert (error.message, error.hint) == (message, hint)


def test_bad_config_values_name_the_file(tmp_path):
    config = tmp_path / "llamapod.toml"
    config.write_text("[train]\nmax_steps = -1\n")
    assert _error([], config).message == f"[train] max_steps in {config}: must be >= 1 (got -1)"
    config.write_text("[train]\nlerning_rate = 1\n")
    error = _error([], config)
    assert (error.message, error.hint) == (f"config file {config} [train]: unknown setting 'lerning_rate'",
                                           "did you mean 'learning_rate'?")


def test_missing_and_unreadable_config(tmp_path):
    missing = tmp_path / "nope.toml"
    assert _error([], missing).message == f"config file {missing} does not exist"
    broken = tmp_path / "broken.toml"
    broken.write_bytes(b"[train\nmax_steps = 1\n")
    assert _error([], broken).message.startswith(f"config file {broken} is not valid TOML: ")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[train]")
    assert _error([], binary).message == f"config file {binary} is not UTF-8 text"


def test_help_lists_every_flag_with_defaults():
    text = flags_help()
    for name in TrainSpec.model_fields:
        assert f"--{name} " in text
    assert "--llama_intermediate_size" in text
