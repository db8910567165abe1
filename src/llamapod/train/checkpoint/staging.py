"""How an async save copies the training state out of device memory before writing it.

DCP's ``DefaultStager`` copies in a thread of its own and, on a GPU, on a CUDA stream of
its own. Nothing orders that stream after the training stream: kernels of the last
optimizer step still queued when the save starts (the CPU runs ahead of the GPU) could
be read half done. So the training streams are drained first, once per save.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


def state_devices(state: Any) -> set[torch.device]:
    """The devices holding the tensors of a (nested) state dict; a DTensor counts its shard's."""
    found: set[torch.device] = set()
    pending = [state]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            local = item.to_local() if hasattr(item, "to_local") else item
            found.add(local.device)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return found


def staging_options(devices: Iterable[torch.device]):
    """Pinned host buffers and non-blocking copies when any of the state is in GPU memory.

    Decided by where the state is, not by whether a GPU exists: a CPU run on a GPU host
    (or ``--cpu_offload``, whose state is in host memory already) copies plainly.
    """
    from torch.distributed.checkpoint.staging import StagingOptions

    gpu = any(device.type == "cuda" for device in devices)
    return StagingOptions(use_pinned_memory=gpu, use_shared_memory=False, use_async_staging=True,
                          use_non_blocking_copy=gpu)


def _synchronize_current_stream(device: torch.device) -> None:
    torch.cuda.current_stream(device).synchronize()


def settle_device_writes(devices: Iterable[torch.device],
                         synchronize: Callable[[torch.device], None] = _synchronize_current_stream) -> None:
    """Wait, on each GPU among ``devices``, for the kernels queued on the training stream."""
    for device in sorted({d for d in devices if d.type == "cuda"}, key=lambda d: d.index or 0):
        synchronize(device)
