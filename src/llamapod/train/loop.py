"""The training loop of one worker: data -> FSDP2 model -> AdamW -> metrics -> checkpoints.

Every rank runs this; only rank 0 prints and writes metrics. Collectives happen in the
same order on every rank (no rank skips a step, a validation or a save), so any rank can
fail cleanly without leaving the others waiting in a collective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llamapod import report
from llamapod.config.train import TrainSpec, resolve_model_args
from llamapod.errors import CheckpointError
from llamapod.train import metrics as m
from llamapod.train.model import ModelArgs, Transformer
from llamapod.train.optim import build_optimizer, clip_gradients, lr_at, set_lr
from llamapod.train.parallel import DistEnv, build_mesh, offload_activations, parallelize
from llamapod.shapes import count_parameters, flops_per_token
from llamapod.train.run_data import build_datasets, with_reachable_defaults


def default_run_dir() -> str:
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


def broadcast_value(value: Any, src: int = 0) -> Any:
    box = [value]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_over_ranks(value: torch.Tensor) -> float:
    """The average of a scalar over all ranks (gloo has no AVG reduction: sum, then divide)."""
    value = value.detach().float().reshape(1).clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return float(value.item())


@dataclass
class RunPaths:
    run_dir: Path
    checkpoint_dir: Path

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def plot(self) -> Path:
        return self.run_dir / "metrics.png"


class Trainer:
    def __init__(self, spec: TrainSpec, env: DistEnv):
        self.spec = spec
        self.env = env
        self.device = env.device
        self.started = time.perf_counter()
        run_dir = broadcast_value(spec.run_dir or default_run_dir())
        self.paths = RunPaths(Path(run_dir), Path(spec.effective_checkpoint_dir(run_dir)))
        self.param_dtype = torch.bfloat16 if self._use_bf16() else torch.float32
        self.step = 0
        self.resumed_from: Path | None = None

    def _use_bf16(self) -> bool:
        return self.spec.bf16 if self.spec.bf16 is not None else self.device.type == "cuda"

    # ---- setup ----------------------------------------------------------------

    def setup(self) -> None:
        from llamapod.data import load_tokenizer

        # Decided once, on rank 0: every rank must read the same data with the same tokenizer.
        self.spec, notices = broadcast_value(with_reachable_defaults(self.spec) if self.env.is_main else None)
        if self.env.is_main:
            for notice in notices:
                report.warn(notice)
        spec, env = self.spec, self.env
        self.tokenizer = load_tokenizer(spec.tokenizer)
        self.args: ModelArgs = resolve_model_args(spec, self.tokenizer.vocab_size)
        self.seq_len = self.args.max_seq_len
        self.train_data, self.val_data = build_datasets(spec, self.tokenizer, seq_len=self.seq_len, rank=env.rank,
                                                        world_size=env.world_size)
        self._check_checkpoint_dir_is_ours()
        self.model = self._build_model()
        self.optimizer = build_optimizer(self.model, lr=spec.lr, weight_decay=spec.weight_decay,
                                         betas=(spec.beta1, spec.beta2), device_type=self.device.type)
        from llamapod.train.checkpoint import CheckpointManager

        self.checkpoints = CheckpointManager(self.paths.checkpoint_dir, keep_last=spec.keep_last,
                                             async_save=spec.async_save)
        self._maybe_resume()
        self.flops_per_token = flops_per_token(self._counted_args(), self.seq_len)
        self.peak_flops = self._peak_flops()

    def _counted_args(self) -> ModelArgs:
        # Parameters as built: the embedding and output rows are padded to a multiple of 64.
        return self.args.replace(vocab_size=self.model.vocab_padded)

    def _build_model(self) -> torch.nn.Module:
        spec, env = self.spec, self.env
        with torch.device("meta"):
            model = Transformer(self.args)
        mesh = build_mesh(env, spec.sharding_strategy)
        if spec.cpu_offload and self.device.type == "cpu" and env.is_main:
            report.warn("--cpu_offload saves no memory without a GPU: parameters already live in CPU memory")
        # On a CPU the offload policy still runs (its copies are to the same memory), so this
        # path is the one CPU tests exercise, not a GPU-only branch.
        parallelize(model, mesh, param_dtype=self.param_dtype, activation_checkpointing=spec.activation_checkpointing,
                    compile_blocks=spec.compile, cpu_offload=spec.cpu_offload)
        # Only now, sharded, does each rank allocate memory: its shard of every tensor.
        model.to_empty(device="cpu" if spec.cpu_offload else self.device)
        model.init_weights(seed=spec.seed, buffer_device=self.device, std=spec.initializer_range)
        if spec.init_from:
            from llamapod.train.hf import load_hf_weights

            load_hf_weights(model, spec.init_from)
        return model

    def _check_checkpoint_dir_is_ours(self) -> None:
        """Refuse to write into a folder holding another run's checkpoints (nothing is overwritten)."""
        from llamapod.train.checkpoint import find_latest

        resume = Path(self.spec.resume_from_checkpoint) if self.spec.resume_from_checkpoint else None
        if resume is not None and resume.resolve() == self.paths.checkpoint_dir.resolve():
            return
        existing = find_latest(self.paths.checkpoint_dir, warn=False) if self.paths.checkpoint_dir.is_dir() else None
        if existing is not None:
            raise CheckpointError(
                f"checkpoint folder {self.paths.checkpoint_dir} already holds checkpoints ({existing.name})",
                f"pass --resume_from_checkpoint {self.paths.checkpoint_dir} to continue that run, "
                f"or choose another --checkpoint_dir / --run_dir")

    def _maybe_resume(self) -> None:
        source = self.spec.resume_from_checkpoint
        if not source:
            return
        from llamapod.train.checkpoint import CheckpointManager, find_latest

        path = Path(source)
        if path.is_file():
            raise CheckpointError(f"--resume_from_checkpoint {source} is a file, not a folder",
                                  "pass the checkpoint folder (the one holding step_* folders)")
        latest = find_latest(path, warn=self.env.is_main) if path.is_dir() else None
        if latest is None and not (path / ".metadata").exists():
            if self.env.is_main:
                report.info(f"no checkpoint in {source} yet: starting fresh")
            return
        reader = CheckpointManager(path)
        meta = reader.load(latest or path, self.model, self.optimizer, tokenizer=self.tokenizer.name)
        self.step = int(meta["step"])
        if "data" in meta:
            self.train_data.load_state_dict(meta["data"])
        self.resumed_from = latest or path
        if self.env.is_main:
            report.info(f"resumed from {self.resumed_from} (step {self.step})")

    def _peak_flops(self) -> m.PeakFlops:
        if self.device.type == "cuda":
            return m.gpu_peak_flops(self.device)
        # Measured by one rank while the others wait, so the probe runs on an idle machine.
        peak = None
        if self.env.is_main:
            peak = m.cpu_peak(self.param_dtype, torch.get_num_threads())
        return broadcast_value(peak)

    # ---- steps ----------------------------------------------------------------

    def _next_tokens(self, dataset, batch_size: int) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        batch = torch.from_numpy(dataset.next_batch(batch_size))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch, time.perf_counter() - start

    def _loss(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens[:, :-1], targets=tokens[:, 1:])

    def _training_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.spec.offload_activations:
            return self._loss(tokens)
        with offload_activations(self.device):
            return self._loss(tokens)

    def _last_micro_step(self, last: bool) -> None:
        """Let FSDP2 reduce-scatter every micro-batch, so gradients stay sharded throughout.

        Skipping the reduce-scatter until the last micro-batch would keep an unsharded fp32
        gradient of every parameter meanwhile: 27 GB per GPU for 7B. With hybrid sharding
        only the all-reduce across node replicas waits for the last micro-batch.
        """
        if self.spec.sharding_strategy == "hybrid":
            self.model.set_requires_all_reduce(last)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """One optimizer step; returns (local mean loss, grad norm, lr, data seconds).

        Loss and norm stay on the device (reading them would wait for the GPU): the caller
        reads them on logging steps.
        """
        spec = self.spec
        lr = lr_at(self.step, max_lr=spec.lr, min_lr=spec.final_lr(), warmup_steps=spec.warmup_steps(),
                   decay_steps=spec.decay_steps(), style=spec.lr_decay_style, plateau_steps=spec.plateau_steps())
        set_lr(self.optimizer, lr)
        total = torch.zeros((), device=self.device)
        data_seconds = 0.0
        for micro in range(spec.grad_accum):
            tokens, waited = self._next_tokens(self.train_data, spec.train_batch_size)
            data_seconds += waited
            self._last_micro_step(micro == spec.grad_accum - 1)
            loss = self._training_loss(tokens) / spec.grad_accum
            loss.backward()
            total += loss.detach()
        grad_norm = clip_gradients(self.model, spec.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total, grad_norm, lr, data_seconds

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        self.val_data.reset()
        total = torch.zeros((), device=self.device)
        for _ in range(self.spec.validation_batches):
            tokens, _ = self._next_tokens(self.val_data, self.spec.val_batch_size)
            total += self._loss(tokens)
        self.model.train()
        return mean_over_ranks(total / self.spec.validation_batches)

    def save_checkpoint(self) -> None:
        meta = {
            "model_args": self.args.to_dict(),
            "train_config": self.spec.model_dump(),
            "tokenizer": self.tokenizer.name,
            "tokenizer_spec": self.spec.tokenizer,
            "data": self.train_data.state_dict(),
            "scheduler": {"style": self.spec.lr_decay_style, "step": self.step},
            "world": {"world_size": self.env.world_size, "nodes": self.env.nodes,
                      "sharding_strategy": self.spec.sharding_strategy, "device": self.device.type},
        }
        self.checkpoints.save(self.step, self.model, self.optimizer, meta)

    # ---- the run ----------------------------------------------------------------

    def _done(self) -> bool:
        return self.step >= self.spec.max_steps or self.train_data.epoch >= self.spec.epochs

    def run(self) -> dict[str, Any]:
        self._folder_locks = lock_run_folders(self.paths, self.env.is_main)
        self.setup()
        spec, env = self.spec, self.env
        main = env.is_main
        log = m.MetricsLog(self.paths.metrics, append=self.resumed_from is not None) if main else None
        board = (m.TensorBoardLog(Path(spec.tensorboard_dir), resumed_at=self.step)
                 if main and spec.tensorboard_dir else None)
        if main:
            self._announce()
        global_batch = spec.train_batch_size * spec.grad_accum * env.world_size
        meter = m.ThroughputMeter(self.flops_per_token, env.world_size, self.peak_flops.flops)
        if main:
            log.write({"event": "start", "step": self.step, "peak_flops": self.peak_flops.flops,
                       "peak_flops_source": self.peak_flops.source, "recipe": spec.recipe})
        first_loss = last_loss = val_loss = None
        m.reset_peak_memory(self.device)
        with _progress(main, spec.max_steps) as progress:
            progress.update(self.step)
            while not self._done():
                started = time.perf_counter()
                loss, grad_norm, lr, data_seconds = self.train_step()
                step = self.step
                final = self._done()
                logs = step % spec.logging_freq == 0 or final or step == 1
                validates = self.val_data is not None and (final or bool(spec.validation_freq)
                                                           and step % spec.validation_freq == 0)
                saves = bool((spec.checkpoint_freq and step % spec.checkpoint_freq == 0) or final)
                if logs or validates or saves:
                    # A GPU runs behind the CPU: the step's time is whole once its kernels have run,
                    # and must not leak into the validation's or the save's.
                    m.synchronize(self.device)
                meter.add(global_batch * self.seq_len, time.perf_counter() - started, data_seconds)
                if logs:
                    last_loss = mean_over_ranks(loss)
                    first_loss = last_loss if first_loss is None else first_loss
                    record = {"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm),
                              **meter.snapshot(), "peak_mem_gib": m.peak_memory_gib(self.device)}
                    if main:
                        log.write(record)
                        if board is not None:
                            board.write(record)
                        progress.log(m.format_step_line(step, spec.max_steps, record))
                        progress.update(step, f"training | loss {last_loss:.3f}")
                if validates:
                    val_loss = self.validate()
                    if main:
                        log.write({"step": step, "val_loss": val_loss, "val_ppl": _ppl(val_loss)})
                        if board is not None:
                            board.write({"step": step, "val_loss": val_loss, "val_ppl": _ppl(val_loss)})
                        progress.log(f"step {step}/{spec.max_steps} | val_loss {val_loss:.4f} | "
                                     f"val_ppl {_ppl(val_loss):.2f}")
                if saves:
                    self.save_checkpoint()
                if main:
                    progress.update(step)
        self.checkpoints.close()
        summary = {"event": "done", "step": self.step, "loss": last_loss, "val_loss": val_loss,
                   "wall_s": time.perf_counter() - self.started, "first_loss": first_loss,
                   "uniform_loss": math.log(self.tokenizer.vocab_size)}
        if main:
            log.write(summary)
            log.close()
            if board is not None:
                board.close()
            m.write_plot(self.paths.metrics, self.paths.plot)
            return self._result(summary)
        return summary

    def _announce(self) -> None:
        spec, env = self.spec, self.env
        params = count_parameters(self._counted_args())
        where = (f"{env.world_size} GPU{'s' if env.world_size > 1 else ''}" if self.device.type == "cuda"
                 else f"{env.world_size} CPU worker{'s' if env.world_size > 1 else ''}")
        precision = "bf16 params / fp32 reduce" if self.param_dtype == torch.bfloat16 else "fp32"
        report.step(f"model {spec.preset if _is_plain_preset(spec) else 'custom'}: {params:,} parameters "
                f"({self.args.n_layers} layers, width {self.args.dim}, {self.args.n_heads} heads, "
                f"{self.args.n_kv_heads} kv heads, vocab {self.tokenizer.vocab_size})")
        checkpointing = ("" if spec.activation_checkpointing == "none"
                         else f", {spec.activation_checkpointing} activation checkpointing")
        report.info(f"  FSDP2 {spec.sharding_strategy} sharding on {where}, {precision}{checkpointing}; "
                f"batch {spec.train_batch_size}x{spec.grad_accum}x{env.world_size} sequences of {self.seq_len} tokens; "
                f"{spec.max_steps} steps; {spec.recipe} recipe (lr {spec.lr:g}, weight decay {spec.weight_decay:g})")
        report.info(f"  {self.peak_flops.describe()}")
        report.info(f"  data: {self.train_data.num_sequences:,} training sequences"
                + (f", {self.val_data.num_sequences:,} validation" if self.val_data is not None else "")
                + f"; run folder {self.paths.run_dir}")

    def _result(self, summary: dict[str, Any]) -> dict[str, Any]:
        """What the run did and where its files are: the caller (the CLI) tells the user."""
        newest = self.checkpoints.latest()
        return {**summary, "max_steps": self.spec.max_steps, "vocab_size": self.tokenizer.vocab_size,
                "run_dir": str(self.paths.run_dir), "metrics": str(self.paths.metrics), "plot": str(self.paths.plot),
                "checkpoint_dir": str(self.paths.checkpoint_dir), "newest_checkpoint": newest.name if newest else None,
                "train_longer": self._train_longer_command(2 * summary["step"])}

    def _train_longer_command(self, max_steps: int) -> str:
        from llamapod.train.resume import resume_command

        spec = self.spec.model_copy(update={"run_dir": str(self.paths.run_dir)})
        return resume_command(spec, max_steps=max_steps)

    def release_run_folders(self) -> None:
        for lock in getattr(self, "_folder_locks", []):
            lock.release()


def lock_run_folders(paths: RunPaths, is_main: bool) -> list:
    """Rank 0 takes the run's folders (see ``runfolder.lock_run``); every rank raises its failure."""
    from llamapod.errors import TrainingError
    from llamapod.train.runfolder import lock_run

    locks, failure = [], None
    if is_main:
        try:
            locks = lock_run(paths.run_dir, paths.checkpoint_dir)
        except TrainingError as exc:
            failure = (exc.message, exc.hint)
    failure = broadcast_value(failure)
    if failure is not None:
        raise TrainingError(*failure)
    return locks


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 80.0))


def _is_plain_preset(spec: TrainSpec) -> bool:
    return all(getattr(spec, f) is None for f in ("hidden_width", "num_layers", "num_heads",
                                                   "num_key_value_heads", "intermediate_size"))


class _NoProgress:
    """Ranks other than 0 show nothing: one rank speaks for the job."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, *args, **kwargs):
        return None

    def log(self, message: str) -> None:
        return None


def _progress(main: bool, total: int):
    # Without a terminal the metrics lines are the progress (CI, Slurm logs): no bar lines.
    return report.progress("training", total, plain_updates=False) if main else _NoProgress()


def train_worker(spec: TrainSpec) -> dict[str, Any]:
    """Entry point of one worker process (torchrun, srun, or a world of one)."""
    from llamapod.train.parallel import configure_cpu_threads, fill_launch_env, init_distributed, mesh_shape, read_env

    fill_launch_env()
    env = read_env(spec.device)
    mesh_shape(spec.sharding_strategy, env.world_size, env.nodes, env.local_world_size)
    if not env.is_main:
        report.use(report.QuietReporter())
    configure_cpu_threads(env)
    init_distributed(env)
    trainer = None
    try:
        trainer = Trainer(spec, env)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.release_run_folders()
        if dist.is_initialized():
            dist.destroy_process_group()

