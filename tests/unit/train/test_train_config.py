"""Training flags and the [train] table: the seed's command line, overrides, exact errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamapod.config.train import TrainSpec, resolve_model_args

from llamapod.config.train_flags import flags_help, parse_train_args
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
    spec = parse_train_args(SEED_7B + ["--lr", "3e-4", "--bf16", "0", "--preset", "llama2-7b"])
    args = spec.to_cli_args()
    assert args[:4] == ["--recipe=reference", "--preset=llama2-7b", "--model_type=llama_v2",
                        "--max_context_width=2048"]
    assert "--lr=0.0003" in args and "--bf16=0" in args
    assert parse_train_args(args) == spec
    assert TrainSpec().to_cli_args() == ["--recipe=reference"]
    quick = parse_train_args(["--max_steps", "7"])
    assert quick.to_cli_args() == ["--recipe=quickstart", "--max_steps=7"]
    assert parse_train_args(quick.to_cli_args()) == quick


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
     "llama3-8b, llama3-70b, reference-default"),
    (["--bf16", "2"], "--bf16: must be 1 or 0 (true or false) (got 2)",
     "see `llamapod train --help` for what --bf16 accepts"),
    (["--sharding_strategy", "zero3"], "--sharding_strategy: must be 'full' or 'hybrid' (got zero3)",
     "see `llamapod train --help` for what --sharding_strategy accepts"),
    (["--lr", "1e-3", "--min_lr", "1e-2"], "min_lr (0.01) must not exceed lr (0.001)", "fix the values named above"),
    (["-x"], "unexpected argument '-x'", "training flags look like --name value or --name=value"),
    (["--lr", "inf"], "--lr: must be a finite number (not inf or nan) (got inf)",
     "see `llamapod train --help` for what --lr accepts"),
    (["--weight_decay", "nan"], "--weight_decay: must be a finite number (not inf or nan) (got nan)",
     "see `llamapod train --help` for what --weight_decay accepts"),
    (["--warmup", "inf"], "--warmup: must be a finite number (not inf or nan) (got inf)",
     "see `llamapod train --help` for what --warmup accepts"),
    (["--checkpoint_dir", "ckpt\necho pwned"], "--checkpoint_dir: must not contain control characters (newline, "
     "tab, escape) (got 'ckpt\\necho pwned')", "see `llamapod train --help` for what --checkpoint_dir accepts"),
    (["--model_type", "gpt_neox"], "--model_type: must be 'llama_v2' or 'llama_v3' (got gpt_neox)",
     "see `llamapod train --help` for what --model_type accepts"),
    (["--resid_pdrop", "high"], "--resid_pdrop: must be a number (got 'high')",
     "see `llamapod train --help` for --resid_pdrop"),
    (["--lr"], "flag --lr needs a value", "write --lr VALUE or --lr=VALUE"),
])
def test_bad_flags_give_one_exact_line(argv, message, hint):
    error = _error(argv)
    assert (error.message, error.hint) == (message, hint)


def test_bad_config_values_name_the_file(tmp_path):
    config = tmp_path / "llamapod.toml"
    config.write_text("[train]\nmax_steps = -1\n")
    assert _error([], config).message == f"[train] max_steps in {config}: must be >= 1 (got -1)"
    config.write_text("[train]\nmax_steps = true\n")
    assert _error([], config).message == f"[train] max_steps in {config}: must be a number, not true/false (got True)"
    config.write_text("[train]\nlr = inf\n")
    assert _error([], config).message == (f"[train] lr in {config}: must be a finite number (not inf or nan) "
                                          f"(got inf)")
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


# Every flag of the reference's argument parser (awsome-distributed-training 10.FSDP
# model_utils/arguments.py, all its versions), with a value of the type it parses.
REFERENCE_FLAGS = {
    "train_batch_size": "2", "val_batch_size": "4", "max_steps": "10", "max_training_steps": "10", "seed": "1",
    "same_seed": "0", "bf16": "1", "grad_clip": "1.0", "weight_decay": "0.2", "beta1": "0.9", "beta2": "0.95",
    "activation_checkpointing": "1", "intermediate_size": "96", "llama_intermediate_size": "96",
    "num_key_value_heads": "2", "logging_freq": "1", "tensorboard_dir": "tb", "max_context_width": "32",
    "vocab_size": "50432", "hidden_width": "64", "num_layers": "2", "num_heads": "4", "resid_pdrop": "0.1",
    "embd_pdrop": "0.1", "attn_pdrop": "0.1", "summary_first_pdrop": "0.1", "initializer_range": "0.02",
    "model_type": "llama_v2", "rotary_pct": "0.25", "rotary_emb_base": "10000", "offload_activations": "1",
    "activation_loading_horizon": "2", "limit_all_gathers": "1", "sharding_strategy": "full", "cpu_offload": "0",
    "lr": "0.0001", "lr_decay_style": "plateau", "lr_decay_iters": "8", "min_lr": "1e-05", "warmup": "0.0032",
    "plateau": "0.1", "dataset": "allenai/c4", "dataset_config_name": "en", "tokenizer": "EleutherAI/gpt-neox-20b",
    "resume_from_checkpoint": "ckpt", "checkpoint_dir": "ckpt", "epochs": "3", "checkpoint_freq": "1000",
    "validation_freq": "100", "validation_batches": "10", "train_split": "train", "val_split": "validation",
    "n_samples_train": "4920", "n_samples_val": "1230",
}
NO_EFFECT = {"same_seed", "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_pdrop", "rotary_pct",
             "activation_loading_horizon", "limit_all_gathers"}


def test_every_reference_flag_is_accepted_and_the_meaningless_ones_say_so():
    from llamapod.config.train_flags import read_train_args

    for name, value in REFERENCE_FLAGS.items():
        parsed = read_train_args(["--preset=tiny", f"--{name}={value}"])
        if name in NO_EFFECT:
            assert len(parsed.notices) == 1 and parsed.notices[0].startswith(f"--{name} has no effect: "), name
        else:
            assert parsed.notices == [], (name, parsed.notices)
    every = read_train_args([f"--{name}={value}" for name, value in REFERENCE_FLAGS.items()])
    spec = every.spec
    assert (spec.lr_decay_style, spec.lr_decay_iters, spec.plateau, spec.offload_activations) == ("plateau", 8, 0.1, True)
    assert (spec.max_steps, spec.rope_theta, spec.val_split, spec.n_samples_train) == (10, 10000.0, "validation", 4920)
    assert spec.tensorboard_dir == "tb" and spec.initializer_range == 0.02
    assert len(every.notices) == len(NO_EFFECT)


def test_the_seed_job_gets_the_references_defaults_for_what_it_does_not_name():
    spec = parse_train_args(SEED_7B)
    assert spec.recipe == "reference"
    assert (spec.lr, spec.min_lr, spec.warmup, spec.weight_decay) == (1e-4, 1e-5, 0.0032, 0.2)
    assert (spec.activation_checkpointing, spec.max_steps, spec.logging_freq) == ("full", 5000, 1)
    assert (spec.grad_clip, spec.beta1, spec.beta2, spec.seed, spec.lr_decay_style) == (1.0, 0.9, 0.95, 12345, "cosine")
    assert (spec.dataset, spec.effective_dataset_config_name()) == ("allenai/c4", "en")
    assert spec.warmup_steps() == 16 and spec.final_lr() == 1e-5  # 0.32% of 5000 steps
    # Sizes the seed does not name come from the reference's default model, not a preset.
    args = resolve_model_args(parse_train_args(["--num_layers", "2"]), vocab_size=32000)
    assert (args.dim, args.n_layers, args.n_heads, args.ffn_dim, args.max_seq_len) == (768, 2, 12, 11008, 2048)


def test_the_main_job_and_toy_presets_keep_the_quickstart_recipe():
    for argv in ([], ["--preset", "tiny"], ["--max_steps", "7"], ["--recipe", "quickstart", "--num_layers", "2"]):
        spec = parse_train_args(argv)
        assert spec.recipe == "quickstart", argv
        assert (spec.lr, spec.weight_decay, spec.activation_checkpointing, spec.dataset) == (
            2e-3, 0.1, "none", "default"), argv
    assert parse_train_args(["--max_steps", "7"]).max_steps == 7
    # A real model, or any size given in the reference's terms, is a reference job.
    assert parse_train_args(["--preset", "llama2-7b"]).recipe == "reference"
    assert parse_train_args(["--preset", "tiny", "--max_context_width", "32"]).recipe == "reference"
    assert parse_train_args(["--recipe", "reference", "--preset", "tiny"]).lr == 1e-4


def test_the_seed_job_pasted_as_a_bash_array_runs_with_a_warning_about_the_stray_words():
    import subprocess

    from llamapod.config.train_flags import read_train_args

    # The seed's step-7 array, comment lines and trailing spaces as written in the guide.
    script = """declare -a TRAINING_ARGS=(
        --max_context_width=2048 \\
        --num_key_value_heads=32 \\ # 7b: 32 13b: 40 70b: 8
        --llama_intermediate_size=11008 \\ # 7b: 11008 13b: 13824 70b: 28672
        --hidden_width=4096 \\ # 7b: 4096 13b: 5120 70b: 8192
        --num_layers=32 \\ # 7b: 32 13b: 40 70b: 80
        --num_heads=32 \\ # 7b: 32 13b: 40 70b: 64
        --model_type=llama_v2 \\
        --validation_batches=1 \\    
        --resume_from_checkpoint=./checkpoints
    )
    printf '%s\\0' "${TRAINING_ARGS[@]}"
    """
    argv = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    assert " #" in argv and "7b:" in argv and " " in argv  # what bash really passes
    parsed = read_train_args(argv)
    assert (parsed.spec.hidden_width, parsed.spec.num_layers, parsed.spec.num_key_value_heads) == (4096, 32, 32)
    assert len(parsed.notices) == 1 and parsed.notices[0].startswith("ignored 36 word(s) that are not flags")


def test_learning_rate_schedules_of_the_reference():
    from llamapod.train.optim import lr_at

    kw = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)
    assert lr_at(60, style="exponential", **kw) == pytest.approx(2 ** -0.5)
    assert lr_at(110, style="exponential", **kw) == pytest.approx(0.5)  # halves over the decay
    assert lr_at(30, style="plateau", plateau_steps=20, **kw) == pytest.approx(1.0)
    assert lr_at(70, style="plateau", plateau_steps=20, **kw) == pytest.approx(1.0 - 0.9 * 0.5)
    assert lr_at(500, style="cosine", **kw) == pytest.approx(0.1)  # past --lr_decay_iters: min_lr
    spec = parse_train_args(["--preset", "tiny", "--recipe", "reference", "--max_steps", "100", "--lr_decay_iters",
                             "50", "--warmup", "0.1", "--lr_decay_style", "plateau", "--plateau", "0.2"])
    assert (spec.decay_steps(), spec.warmup_steps(), spec.plateau_steps()) == (50, 5, 10)


def test_the_references_sample_and_split_flags_reach_the_data(tmp_path, monkeypatch):
    import json

    from llamapod.data import load_tokenizer
    from llamapod.errors import DataError
    from llamapod.train.loop import build_datasets

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} " * 40}) + "\n" for i in range(60)))
    tokenizer = load_tokenizer("default")

    def documents(*flags):
        spec = parse_train_args(["--preset=tiny", "--recipe=quickstart", f"--dataset={corpus}",
                                 "--max_context_width=16", *flags])
        train, val = build_datasets(spec, tokenizer, seq_len=16, rank=0, world_size=1)
        return train.shards.num_documents if hasattr(train, "shards") else train.num_sequences

    assert documents("--n_samples_train=12") < documents()
    with pytest.raises(DataError) as info:
        documents("--val_split=validation")
    assert info.value.message.startswith("--train_split/--val_split name splits of a Hugging Face dataset")
