"""Does a training job fit in its GPUs' memory? Answered before anything is written or submitted.

``assess_memory`` estimates the peak per GPU of a job (a TrainSpec on some hardware) with
``llamapod.sizing.memory`` and compares it with what the GPU can hold
(``llamapod.instances.usable_gpu_memory_gib``); ``require_fit`` turns a job that does not
fit into an error whose hint lists the settings that would make it fit, each with its own
estimate. Torch-free, like ``memory``: ``llamapod plan`` runs it on a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llamapod.errors import TrainingError
from llamapod.instances import InstanceInfo, instance_info, known_instance_types, usable_gpu_memory_gib
from llamapod.sizing.memory import GIB, MemoryEstimate, MemoryJob, estimate_memory
from llamapod.shapes import ModelArgs

if TYPE_CHECKING:
    from llamapod.config.train import TrainSpec

# Vocabulary sizes of tokenizers a job names, so the estimate needs no download: the
# model's embedding and loss follow the tokenizer, not the preset. "default" is
# llamapod's own BPE (llamapod.data.default.VOCAB_SIZE; a test checks they agree).
TOKENIZER_VOCAB = {
    "default": 8192,
    "hf-internal-testing/llama-tokenizer": 32000,
    "meta-llama/Llama-2-7b-hf": 32000,
    "EleutherAI/gpt-neox-20b": 50277,
}

# How far `--nodes N` suggestions look: beyond this, more nodes is not a practical answer.
MAX_SUGGESTED_NODES = 1024
MAX_SUGGESTED_INSTANCE_TYPES = 2


@dataclass(frozen=True)
class MemoryFit:
    """A job's estimated peak per GPU against what one GPU of its instance type can hold."""

    job: MemoryJob
    estimate: MemoryEstimate
    accelerator: str                     # "A10G"; "GPU" when the instance type is unknown
    instance_type: str | None
    usable_gib: float | None             # None: this GPU's memory is not known
    suggestions: list[str] = field(default_factory=list)   # settings that fit, when this does not

    @property
    def fits(self) -> bool:
        return self.usable_gib is None or self.estimate.total_gib <= self.usable_gib


def memory_job(spec: "TrainSpec", model: ModelArgs, *, nodes: int, gpus_per_node: int) -> MemoryJob:
    """The memory-relevant part of ``spec`` on ``nodes`` x ``gpus_per_node`` GPUs.

    ``model`` is the spec's resolved shape; its vocabulary is replaced by the tokenizer's
    when the tokenizer is a known one (the trainer sizes the embedding from the tokenizer).
    """
    vocab = spec.vocab_size or TOKENIZER_VOCAB.get(spec.tokenizer or "", model.vocab_size)
    return MemoryJob(
        model=model.replace(vocab_size=vocab), seq_len=model.max_seq_len, batch_size=spec.train_batch_size,
        grad_accum=spec.grad_accum, nodes=nodes, gpus_per_node=gpus_per_node, sharding=spec.sharding_strategy,
        # The trainer's default on a GPU: bf16 parameters, fp32 reduction.
        bf16=spec.bf16 if spec.bf16 is not None else True,
        activation_checkpointing=spec.activation_checkpointing, offload_activations=spec.offload_activations,
        cpu_offload=spec.cpu_offload, device="cuda")


def assess_memory(spec: "TrainSpec", model: ModelArgs, *, instance_type: str | None, nodes: int,
                  gpus_per_node: int) -> MemoryFit | None:
    """The job's fit on ``instance_type`` (None when its nodes have no GPUs: nothing to fit)."""
    info = instance_info(instance_type) if instance_type else InstanceInfo()
    if instance_type and not info.gpus:
        return None
    job = memory_job(spec, model, nodes=nodes, gpus_per_node=gpus_per_node)
    estimate = estimate_memory(job)
    usable = usable_gpu_memory_gib(info) if info.gpus else None
    fit = MemoryFit(job, estimate, info.accelerator or "GPU", instance_type, usable)
    if fit.fits:
        return fit
    return MemoryFit(job, estimate, fit.accelerator, instance_type, usable,
                     suggestions=ways_to_fit(job, usable, instance_type))


def require_fit(fit: MemoryFit) -> None:
    """Raise TrainingError for a job that does not fit, with the settings that would."""
    if fit.fits:
        return
    where = f"an {fit.accelerator}" if fit.accelerator[:1] in "AEIOU" else f"a {fit.accelerator}"
    raise TrainingError(
        f"the job needs an estimated {fit.estimate.total_gib:.1f} GiB per GPU (peak {fit.estimate.phase}), more than "
        f"the {fit.usable_gib:.1f} GiB usable on {where} ({fit.instance_type}): it would run out of memory",
        fit_hint(fit))


def fit_hint(fit: MemoryFit) -> str:
    if fit.suggestions:
        return f"it fits with {'; or '.join(fit.suggestions)}; or pass --force to submit it anyway"
    return ("no single setting makes it fit: combine --activation_checkpointing 1, --offload_activations 1 and "
            "--cpu_offload 1, shorten --max_context_width, or pass --force to submit it anyway")


def ways_to_fit(job: MemoryJob, usable_gib: float, instance_type: str | None) -> list[str]:
    """Single changes of the job that bring its estimate under ``usable_gib``, each with its estimate."""
    ways = [*_checkpointing_ways(job), *_offload_ways(job), *_batch_ways(job, usable_gib),
            *_node_ways(job, usable_gib), *_sharding_ways(job)]
    fitting = [f"{flags} (est. {_gib(candidate)} GiB)" for flags, candidate in ways
               if estimate_memory(candidate).total_gib <= usable_gib]
    return fitting or _instance_ways(job, usable_gib, instance_type)


def _gib(job: MemoryJob) -> str:
    return f"{estimate_memory(job).total / GIB:.1f}"


def _checkpointing_ways(job: MemoryJob) -> list[tuple[str, MemoryJob]]:
    ways = []
    if job.activation_checkpointing != "full":
        ways.append(("--activation_checkpointing 1", job.replace(activation_checkpointing="full")))
    if job.activation_checkpointing == "none":
        ways.append(("--activation_checkpointing selective", job.replace(activation_checkpointing="selective")))
    return ways


def _offload_ways(job: MemoryJob) -> list[tuple[str, MemoryJob]]:
    ways = []
    if not job.offload_activations:
        ways.append(("--offload_activations 1", job.replace(offload_activations=True)))
    if not job.cpu_offload:
        ways.append(("--cpu_offload 1", job.replace(cpu_offload=True)))
    return ways


def _batch_ways(job: MemoryJob, usable_gib: float) -> list[tuple[str, MemoryJob]]:
    """The largest smaller batch that fits, with the accumulation that keeps the global batch."""
    for batch in range(job.batch_size - 1, 0, -1):
        candidate = job.replace(batch_size=batch)
        if estimate_memory(candidate).total_gib <= usable_gib:
            sequences = job.batch_size * job.grad_accum
            keep = f" --grad_accum {sequences // batch}" if sequences % batch == 0 else ""
            return [(f"--train_batch_size {batch}{keep}", candidate)]
    return []


def _node_ways(job: MemoryJob, usable_gib: float) -> list[tuple[str, MemoryJob]]:
    """The fewest nodes that fit; only full sharding spreads the state over more nodes."""
    if job.sharding != "full":
        return []
    low, high = job.nodes, MAX_SUGGESTED_NODES
    if estimate_memory(job.replace(nodes=high)).total_gib > usable_gib:
        return []
    while high - low > 1:   # the estimate only falls as nodes are added
        middle = (low + high) // 2
        if estimate_memory(job.replace(nodes=middle)).total_gib <= usable_gib:
            high = middle
        else:
            low = middle
    return [(f"--nodes {high}", job.replace(nodes=high))]


def _sharding_ways(job: MemoryJob) -> list[tuple[str, MemoryJob]]:
    if job.sharding == "hybrid":
        return [("--sharding_strategy full", job.replace(sharding="full"))]
    return []


def _instance_ways(job: MemoryJob, usable_gib: float, instance_type: str | None) -> list[str]:
    """GPU instance types with more memory per GPU on which the job fits, cheapest first."""
    options = []
    for name in known_instance_types():
        info = instance_info(name)
        usable = usable_gpu_memory_gib(info)
        if name == instance_type or not info.gpus or usable is None or usable <= usable_gib:
            continue
        candidate = job.replace(gpus_per_node=info.gpus)
        if estimate_memory(candidate).total_gib <= usable:
            price = info.hourly_usd if info.hourly_usd is not None else float("inf")
            options.append((price, f"--instance-type {name} (est. {_gib(candidate)} of {usable:.1f} GiB)"))
    return [text for _, text in sorted(options)[:MAX_SUGGESTED_INSTANCE_TYPES]]


def describe_fit(fit: MemoryFit) -> str:
    """``memory: 18.2 GiB of 22.0 GiB usable per A10G (estimate)``."""
    if fit.usable_gib is None:
        return (f"memory: {fit.estimate.total_gib:.1f} GiB per {fit.accelerator} (estimate; "
                "how much this GPU holds is not known)")
    return f"memory: {fit.estimate.total_gib:.1f} GiB of {fit.usable_gib:.1f} GiB usable per {fit.accelerator} (estimate)"


def describe_parts(estimate: MemoryEstimate) -> str:
    """The estimate's parts, largest first: ``activations 11.2 + optimizer states 1.6 + ... GiB``."""
    parts = sorted(((size, label) for label, size in estimate.parts() if size >= GIB // 20), reverse=True)
    return " + ".join(f"{label} {size / GIB:.1f}" for size, label in parts) + f" GiB (peak {estimate.phase})"
