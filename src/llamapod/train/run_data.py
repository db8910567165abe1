"""A run's data: which dataset and tokenizer, which splits, which documents, for each rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamapod.config.train import TrainSpec
from llamapod.errors import DataError


def source_options(spec: TrainSpec, split: str | None = None, max_documents: int | None = None) -> dict[str, Any]:
    """Options of the dataset source; only those set, since the default corpus takes none."""
    options: dict[str, Any] = {}
    if spec.effective_dataset_config_name() is not None:
        options["dataset_config_name"] = spec.effective_dataset_config_name()
    if spec.text_field is not None:
        options["text_field"] = spec.text_field
    if split is not None and split != "train":
        options["dataset_split"] = split
    if max_documents is not None:
        options["max_documents"] = max_documents
    return options


def with_reachable_defaults(spec: TrainSpec) -> tuple[TrainSpec, list[str]]:
    """The spec with the built-in corpus/tokenizer for reference defaults the hub cannot serve.

    The reference's defaults (allenai/c4, EleutherAI/gpt-neox-20b) come from the Hugging Face
    hub. A job that did not name them, run where the hub is out of reach (a laptop offline,
    a test machine), trains on the built-in corpus and tokenizer instead, and says so; a
    dataset or tokenizer the user named is never replaced.
    """
    from llamapod.data.hub import hub_reachable

    defaults = TrainSpec.model_fields
    unnamed = [name for name in ("dataset", "tokenizer")
               if getattr(spec, name) == defaults[name].default and name not in spec.model_fields_set]
    if not unnamed or hub_reachable():
        return spec, []
    notices = [f"--{name} not given and its reference default {defaults[name].default} needs the Hugging Face hub, "
               f"which is out of reach: using the built-in {'corpus' if name == 'dataset' else 'tokenizer'} "
               f"(pass --{name} to choose)" for name in unnamed]
    return spec.model_copy(update={name: "default" for name in unnamed}), notices


def _is_local_source(dataset: str) -> bool:
    import glob

    return dataset in ("default", "") or Path(dataset).expanduser().exists() or glob.has_magic(dataset)


def _check_splits_apply(spec: TrainSpec) -> None:
    """Split names select splits of a hub dataset; files have none, so a split flag there would
    silently validate on training documents."""
    if (spec.train_split, spec.val_split) == ("train", "train") or not _is_local_source(spec.dataset):
        return
    raise DataError(f"--train_split/--val_split name splits of a Hugging Face dataset, and {spec.dataset} is "
                    f"{'the built-in corpus' if spec.dataset in ('default', '') else 'local files'}",
                    "drop them: validation then holds out documents of the data; or pass separate files as "
                    "--dataset for each run")


def build_datasets(spec: TrainSpec, tokenizer, *, seq_len: int, rank: int, world_size: int):
    """(train, validation or None) for one rank.

    Validation holds out documents of the training split unless --val_split names another
    split; then that split (its first --n_samples_val documents) is the validation set and
    the whole training split trains.
    """
    from llamapod.data import build_dataset

    _check_splits_apply(spec)
    common = dict(seq_len=seq_len, rank=rank, world_size=world_size, seed=spec.seed)
    separate_val = spec.val_split != spec.train_split
    held_out = {"val_fraction": 0.0} if separate_val else {}
    train = build_dataset(spec.dataset, tokenizer, split="train", **common, **held_out,
                          **source_options(spec, spec.train_split, spec.n_samples_train))
    if spec.validation_batches == 0:
        return train, None
    if separate_val:
        val = build_dataset(spec.dataset, tokenizer, split="train", **common, val_fraction=0.0,
                            **source_options(spec, spec.val_split, spec.n_samples_val))
    else:
        val = build_dataset(spec.dataset, tokenizer, split="val", **common,
                            **source_options(spec, spec.train_split, spec.n_samples_train))
    return train, val
