"""Reading a checkpoint's model in one process (sample, export), whatever wrote it."""

from __future__ import annotations

import os
from typing import Any

import torch

from llamapod.errors import CheckpointError
from llamapod.train.checkpoint.folder import META_FILE, _older_hint, resolve_checkpoint
from llamapod.train.checkpoint.index import open_checkpoint, read_tensors


def load_model_state_for_inference(checkpoint_path: str | os.PathLike):
    """``(ModelArgs, full model state_dict on CPU, meta)`` from a checkpoint, in one process.

    Works without torch.distributed and regardless of how many ranks wrote the checkpoint.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from llamapod.train.model import ModelArgs

    opened = open_checkpoint(resolve_checkpoint(checkpoint_path))
    step_dir, meta = opened.step_dir, opened.meta
    if not isinstance(meta.get("model_args"), dict):
        raise CheckpointError(f"checkpoint {step_dir} is corrupted: {META_FILE} lacks model_args",
                              hint=_older_hint(step_dir))
    args = ModelArgs.from_dict(meta["model_args"])
    state: dict[str, Any] = {}
    for key, item in opened.index.state_dict_metadata.items():
        if key.startswith("model.") and isinstance(item, TensorStorageMetadata):
            state[key] = torch.empty(tuple(item.size), dtype=item.properties.dtype)
    read_tensors(opened, state)
    return args, {k[len("model."):]: v for k, v in state.items()}, meta
