"""A worker for the gradient-accumulation test: the trainer's own step, spied on.

``python accum_worker.py OUT STRATEGY`` under torchrun (or with RANK/WORLD_SIZE/... set).
Two Trainers with the same weights and data: one takes 2 micro-batches of 1 sequence per
rank, the other 1 batch of 2. Between the two micro-batches the first records, for every
parameter, whether its gradient is already the reduce-scattered shard (a DTensor of this
rank's shape) or still missing (kept unsharded inside FSDP2). After the optimizer step both
record the full parameters. Rank 0 writes the comparison to OUT as JSON.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from llamapod.config.train_flags import parse_train_args
from llamapod.train.loop import Trainer
from llamapod.train.parallel import exit_without_teardown, fill_launch_env, init_distributed, read_env

FLAGS = ["--preset=tiny", "--recipe=quickstart", "--bf16=0", "--seed=3", "--validation_batches=0", "--lr=1e-2",
         "--warmup=0", "--lr_decay_style=constant", "--grad_clip=0", "--checkpoint_freq=1000"]


def gradient_layout(model: torch.nn.Module) -> dict[str, str]:
    """Where each parameter's gradient lives between micro-batches, read from FSDP2's state.

    "unsharded": a full-size gradient kept inside FSDP2 (what skipping the reduce-scatter
    does); "sharded": this rank's shard, either as ``param.grad`` or, with hybrid sharding,
    as the reduce-scattered output awaiting the cross-replica all-reduce; "missing": none.
    (FSDP2 internals of the pinned torch: ``FSDPParam`` and its param group.)
    """
    from torch.distributed.fsdp import FSDPModule

    layout = {}
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        group = module._get_fsdp_state()._fsdp_param_group
        if group is None:
            continue
        for fsdp_param in group.fsdp_params:
            name = f"{type(module).__name__}.{fsdp_param._param_fqn}"
            unsharded = getattr(fsdp_param, "_unsharded_param", None)
            if fsdp_param.unsharded_accumulated_grad is not None or (unsharded is not None and unsharded.grad is not None):
                layout[name] = "unsharded"
            elif fsdp_param.sharded_param.grad is not None or group._partial_reduce_output is not None:
                layout[name] = "sharded"
            else:
                layout[name] = "missing"
    return layout


def trained_parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: param.full_tensor().detach().clone() for name, param in trainer.model.named_parameters()}


def run(flags: list[str], run_dir: str, spy: bool) -> tuple[dict[str, torch.Tensor], list[dict[str, str]]]:
    env = read_env("cpu")
    trainer = Trainer(parse_train_args(flags + [f"--run_dir={run_dir}"]), env)
    trainer.setup()
    layouts: list[dict[str, str]] = []
    if spy:
        original, calls = trainer._training_loss, []

        def spied(tokens):
            if len(calls) == 1:  # between the first micro-batch's backward and the second's forward
                layouts.append(gradient_layout(trainer.model))
            calls.append(tokens)
            return original(tokens)

        trainer._training_loss = spied
    trainer.train_step()
    return trained_parameters(trainer), layouts


def main() -> int:
    out, strategy = sys.argv[1], sys.argv[2]
    fill_launch_env()
    init_distributed(read_env("cpu"))
    flags = FLAGS + [f"--sharding_strategy={strategy}"]
    accumulated, layouts = run(flags + ["--train_batch_size=1", "--grad_accum=2"], f"{out}.accum", spy=True)
    single, _ = run(flags + ["--train_batch_size=2", "--grad_accum=1"], f"{out}.single", spy=False)
    worst = max(float((accumulated[name] - single[name]).abs().max()) for name in single)
    moved = max(float(single[name].abs().max()) for name in single)
    if dist.get_rank() == 0:
        with open(out, "w", encoding="utf-8") as handle:
            json.dump({"layouts": layouts, "max_difference": worst, "max_parameter": moved,
                       "world_size": dist.get_world_size()}, handle)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
