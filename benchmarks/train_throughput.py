"""Training throughput: llamapod's Llama vs Hugging Face transformers' LlamaForCausalLM.

Same configuration, same FSDP2 wrapping (each decoder block, then the root), same fp32
CPU setting, batch, sequence length and AdamW optimizer, 2 ranks over gloo, one run. Each
model computes the same next-token cross-entropy the way its trainer does: llamapod's fused
chunked output projection + loss, transformers' ``labels=`` loss on full logits.

    python benchmarks/train_throughput.py            # starts 2 workers with torch.distributed.run

Prints tokens/s of each, their ratio, and achieved FLOP/s (FLOPs per token from FACTS.md's
formula × tokens/s) as a share of the matmul peak measured in the same run on the same
ranks. Steps of the two models are interleaved in rounds so that noise from other work on
the machine hits both alike.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CONFIG = dict(dim=512, n_layers=4, n_heads=8, n_kv_heads=4, ffn_dim=1536, vocab_size=8192, max_seq_len=256)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="sequences per rank per step")
    p.add_argument("--seq", type=int, default=CONFIG["max_seq_len"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per model per round")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def build_ours(args):
    import torch

    from llamapod.train.model import Transformer

    with torch.device("meta"):
        model = Transformer(args)
    return model, list(model.layers.values())


def build_hf(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamapod.train.model import padded_vocab_size

    config = LlamaConfig(
        vocab_size=padded_vocab_size(args.vocab_size), hidden_size=args.dim, intermediate_size=args.ffn_dim,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta}, attention_dropout=0.0,
        attn_implementation="sdpa")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return model, list(model.model.layers)


def shard_and_materialise(model, blocks, mesh):
    import torch
    from torch.distributed.fsdp import fully_shard

    for index, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, reshard_after_forward=index < len(blocks) - 1)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, param in model.named_parameters():
            local = param.to_local()
            if name.endswith("norm.weight"):
                local.fill_(1.0)
            else:
                local.normal_(0.0, 0.02)
    if hasattr(model, "reset_rotary"):
        model.reset_rotary("cpu")
    else:
        # HF keeps its rotary inverse frequencies in a buffer: recompute it after to_empty.
        rotary = model.model.rotary_emb
        inv_freq, scaling = rotary.compute_default_rope_parameters(rotary.config)
        rotary.inv_freq = inv_freq
        rotary.original_inv_freq = inv_freq
        rotary.attention_scaling = scaling
    return model


def llamapod_loss(model, inputs, targets):
    return model(inputs, targets=targets)


def transformers_loss(model, inputs, targets):
    # shift_labels: the targets are already shifted; labels= only switches the loss on.
    return model(input_ids=inputs, labels=targets, shift_labels=targets.contiguous(), use_cache=False).loss


def make_step(model, loss_of, optimizer):
    def step(tokens):
        loss = loss_of(model, tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def worker(opts) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from llamapod.train.metrics import measure_matmul_peak
    from llamapod.train.optim import build_optimizer
    from llamapod.shapes import ModelArgs, flops_per_token

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // world))
    mesh = init_device_mesh("cpu", (world,))
    args = ModelArgs(**{**CONFIG, "max_seq_len": opts.seq})

    ours = shard_and_materialise(*build_ours(args), mesh)
    hf = shard_and_materialise(*build_hf(args), mesh)
    steps = {
        "llamapod": make_step(ours, llamapod_loss, build_optimizer(
            ours, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")),
        "transformers": make_step(hf, transformers_loss, build_optimizer(
            hf, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu")),
    }
    generator = torch.Generator().manual_seed(rank)
    tokens = torch.randint(0, args.vocab_size, (opts.batch, opts.seq + 1), generator=generator)
    for step in steps.values():  # warm-up: allocator, kernel selection, FSDP buffers
        step(tokens)
    seconds = {name: 0.0 for name in steps}
    peaks = []
    for _ in range(opts.rounds):
        for name, step in steps.items():
            dist.barrier()
            start = time.perf_counter()
            for _ in range(opts.steps):
                step(tokens)
            dist.barrier()
            seconds[name] += time.perf_counter() - start
        # The peak, measured in every round (the machine's load varies): all ranks multiply
        # at once, as in training, with the same thread count.
        dist.barrier()
        round_peak = torch.tensor([measure_matmul_peak(torch.float32, torch.get_num_threads(), seconds=0.5)])
        dist.all_reduce(round_peak)
        peaks.append(round_peak.item())
    peak = torch.tensor([sorted(peaks)[len(peaks) // 2]])
    if rank != 0:
        dist.destroy_process_group()
        return
    tokens_per_step = opts.batch * opts.seq * world
    fpt = flops_per_token(args.replace(vocab_size=ours.vocab_padded), opts.seq)
    total_steps = opts.rounds * opts.steps
    print(f"config: {CONFIG | {'max_seq_len': opts.seq}}, batch {opts.batch}/rank, {world} ranks x "
          f"{torch.get_num_threads()} thread(s), fp32, FSDP2 per block + root, gloo")
    print(f"measured matmul peak (all ranks at once, median of {len(peaks)} rounds): {peak.item() / 1e9:.1f} GFLOP/s "
          f"(rounds: {', '.join(f'{p / 1e9:.0f}' for p in peaks)})")
    rates = {}
    for name in steps:
        rates[name] = tokens_per_step * total_steps / seconds[name]
        share = fpt * rates[name] / peak.item()
        print(f"{name:>13}: {rates[name]:8,.0f} tokens/s  {fpt * rates[name] / 1e9:6.1f} GFLOP/s  "
              f"{100 * share:5.1f}% of matmul peak")
    print(f"ratio llamapod / transformers: {rates['llamapod'] / rates['transformers']:.3f}x")
    dist.destroy_process_group()


def main() -> None:
    opts = parse()
    if opts.worker:
        from llamapod.train.parallel import exit_without_teardown

        worker(opts)
        exit_without_teardown(0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    forwarded = [a for a in sys.argv[1:] if not a.startswith("--nproc")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={opts.nproc}",
           __file__, "--worker", *forwarded]
    sys.exit(subprocess.call(cmd, env=env))


if __name__ == "__main__":
    main()
