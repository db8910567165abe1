"""A torchrun worker for the checkpoint tests: the trainer's Llama, sharded with FSDP2 on gloo.

``torchrun --nproc_per_node N ckpt_worker.py MODE DIR OUT [--hf HF_DIR] [--async]``
- MODE "save": (optionally start from the Hugging Face folder HF_DIR, loaded shard by
  shard, and record its logits), train 3 steps, save step 3, train steps 4-5.
- MODE "resume": load the newest checkpoint in DIR, train the next 2 steps.
Rank 0 writes {"losses": [...], "logits": [...]} to OUT.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist

from llamapod.train.checkpoint import CheckpointManager
from llamapod.train.hf import load_hf_weights
from llamapod.train.model import ModelArgs, Transformer
from llamapod.train.parallel import exit_without_teardown, parallelize

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=1000, ffn_dim=160, max_seq_len=32)
GLOBAL_BATCH = 4
SEQ = 17


def global_batch(step: int) -> torch.Tensor:
    return torch.randint(0, ARGS.vocab_size, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(step))


def probe_tokens() -> torch.Tensor:
    return torch.randint(0, ARGS.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))


def loss_on(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def train_step(model, optimizer, step: int, rank: int = 0, world: int = 1) -> float:
    share = GLOBAL_BATCH // world
    tokens = global_batch(step)[rank * share:(rank + 1) * share]
    loss = loss_on(model, tokens)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    total = loss.detach().clone()
    if world > 1:
        dist.all_reduce(total)
    return total.item() / world


def build_sharded(seed: int) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh

    with torch.device("meta"):
        model = Transformer(ARGS)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("dp_shard",))
    parallelize(model, mesh, param_dtype=torch.float32, activation_checkpointing="none", compile_blocks=False,
                cpu_offload=False)
    model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["save", "resume"])
    parser.add_argument("directory")
    parser.add_argument("out")
    parser.add_argument("--hf")
    parser.add_argument("--async", dest="async_save", action="store_true")
    options = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_sharded(seed=1 if options.mode == "save" else 99)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    manager = CheckpointManager(options.directory, keep_last=2, async_save=options.async_save)
    result: dict = {"losses": []}
    if options.mode == "save":
        if options.hf:
            load_hf_weights(model, options.hf)
            with torch.no_grad():
                result["logits"] = model(probe_tokens())[..., : ARGS.vocab_size].tolist()
        for step in range(1, 4):
            train_step(model, optimizer, step, rank, world)
        manager.save(3, model, optimizer, {"model_args": ARGS.to_dict(), "tokenizer": "test-bpe"})
        first = 4
    else:
        meta = manager.load(options.directory, model, optimizer, tokenizer="test-bpe")
        first = meta["step"] + 1
    for step in range(first, first + 2):
        result["losses"].append(train_step(model, optimizer, step, rank, world))
    manager.close()
    if rank == 0:
        with open(options.out, "w") as handle:
            json.dump(result, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_without_teardown(0)
