"""What a finished training run tells its user: how it went, where its files are, what next."""

from __future__ import annotations

from typing import Any

from llamapod.cli import ui


def print_run_result(result: dict[str, Any]) -> None:
    """``result`` is what ``Trainer.run`` returns on rank 0."""
    minutes, seconds = divmod(int(result["wall_s"]), 60)
    if result["first_loss"] is None:
        # Resumed from the final checkpoint (a requeue or auto-resume after the run had
        # finished): nothing was left to train, which is success, not an error.
        ui.success(f"nothing left to train: the checkpoint is already at step {result['step']} "
                   f"of {result['max_steps']}")
    else:
        val = result["val_loss"]
        val_text = f", validation loss {val:.3f} (perplexity {_perplexity(val):.1f})" if val is not None else ""
        ui.success(f"trained {result['step']} steps in {minutes}m{seconds:02d}s: loss "
                   f"{result['first_loss']:.3f} -> {result['loss']:.3f}{val_text}; "
                   f"a uniform guess scores ln({result['vocab_size']}) = {result['uniform_loss']:.3f}")
    newest = result.get("newest_checkpoint")
    ui.out(f"  run folder   {result['run_dir']}")
    ui.out(f"  metrics      {result['metrics']}")
    ui.out(f"  plot         {result['plot']}")
    ui.out(f"  checkpoints  {result['checkpoint_dir']}" + (f" (newest: {newest})" if newest else ""))
    ui.out("next:")
    ui.out(f"  llamapod sample --checkpoint {result['checkpoint_dir']} --prompt 'def '")
    ui.out(f"  {result['train_longer']}   (train longer)")
    ui.out(f"  llamapod export --checkpoint {result['checkpoint_dir']} --hf {result['run_dir']}/hf")
    ui.out("  llamapod train --slurm --dry-run   (the same job as a Slurm batch script)")


def _perplexity(loss: float) -> float:
    import math

    return math.exp(min(loss, 80.0))
