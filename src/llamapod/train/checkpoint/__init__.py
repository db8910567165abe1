"""Atomic, reshardable training checkpoints.

- ``folder``: the folder protocol, torch-free (step folders, the COMPLETE marker,
  meta.json, finding the newest complete step, retention);
- ``index``: DCP's index of a checkpoint, read once per load, and the checks against it;
- ``manager``: ``CheckpointManager``, saving and restoring with torch.distributed.checkpoint,
  synchronously or in the background;
- ``rng``, ``save_errors``, ``staging``, ``inference``: RNG streams, why a save failed, how an
  async save copies the state out of GPU memory, reading a model in one process.
"""

from llamapod.train.checkpoint.folder import (DCP_METADATA, FORMAT, MARKER, META_FILE, TMP_SUFFIX, complete_steps,
                                              find_latest, is_complete, read_meta, resolve_checkpoint, same_tokenizer,
                                              step_dir_name)
from llamapod.train.checkpoint.index import open_checkpoint, read_dcp_metadata, validate_checkpoint
from llamapod.train.checkpoint.inference import load_model_state_for_inference
from llamapod.train.checkpoint.manager import CheckpointManager

__all__ = ["CheckpointManager", "DCP_METADATA", "FORMAT", "MARKER", "META_FILE", "TMP_SUFFIX", "complete_steps",
           "find_latest", "is_complete", "load_model_state_for_inference", "open_checkpoint", "read_dcp_metadata",
           "read_meta", "resolve_checkpoint", "same_tokenizer", "step_dir_name", "validate_checkpoint"]
