"""What an instance type brings to training: accelerators, network, price.

Which types HyperPod accepts is read from botocore's service model (see
``llamapod.config.cluster``); this table only adds what the model does not say.
Prices are on-demand SageMaker list prices in us-east-1 (USD/hour, checked 2025),
used for estimates only: `plan` labels them as such.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceInfo:
    gpus: int = 0               # accelerators per node (GPUs, or Neuron devices for trn)
    accelerator: str = ""       # "A10G", "A100", "H100", ... ("" for CPU-only types)
    efa_interfaces: int = 0     # 0 = no EFA: NCCL must use sockets, set no FI_* variables
    gpu_memory_gib: int = 0
    hourly_usd: float | None = None

    @property
    def has_efa(self) -> bool:
        return self.efa_interfaces > 0


_KNOWN: dict[str, InstanceInfo] = {
    # G5: A10G 24 GB; only the 48xlarge has EFA (1 interface).
    "ml.g5.xlarge": InstanceInfo(1, "A10G", 0, 24, 1.41),
    "ml.g5.2xlarge": InstanceInfo(1, "A10G", 0, 24, 1.69),
    "ml.g5.4xlarge": InstanceInfo(1, "A10G", 0, 24, 2.27),
    "ml.g5.8xlarge": InstanceInfo(1, "A10G", 0, 24, 3.40),
    "ml.g5.12xlarge": InstanceInfo(4, "A10G", 0, 24, 7.09),
    "ml.g5.16xlarge": InstanceInfo(1, "A10G", 0, 24, 5.66),
    "ml.g5.24xlarge": InstanceInfo(4, "A10G", 0, 24, 10.18),
    "ml.g5.48xlarge": InstanceInfo(8, "A10G", 1, 24, 20.36),
    # G6 (L4 24 GB), G6e (L40S 48 GB)
    "ml.g6.12xlarge": InstanceInfo(4, "L4", 0, 24, 5.52),
    "ml.g6.48xlarge": InstanceInfo(8, "L4", 1, 24, 16.59),
    "ml.g6e.12xlarge": InstanceInfo(4, "L40S", 0, 48, 13.12),
    "ml.g6e.48xlarge": InstanceInfo(8, "L40S", 4, 48, 37.65),
    # P4d/P4de: 8 x A100, 4 EFA; P5: 8 x H100, 32 EFA; P5e/P5en: 8 x H200.
    "ml.p4d.24xlarge": InstanceInfo(8, "A100", 4, 40, 37.69),
    "ml.p4de.24xlarge": InstanceInfo(8, "A100", 4, 80, 47.11),
    "ml.p5.48xlarge": InstanceInfo(8, "H100", 32, 80, 113.07),
    "ml.p5.4xlarge": InstanceInfo(1, "H100", 0, 80, 14.13),
    "ml.p5e.48xlarge": InstanceInfo(8, "H200", 32, 141, None),
    "ml.p5en.48xlarge": InstanceInfo(8, "H200", 16, 141, None),
    "ml.trn1.32xlarge": InstanceInfo(16, "Trainium", 8, 32, 24.72),
    "ml.trn1n.32xlarge": InstanceInfo(16, "Trainium", 16, 32, 28.50),
    # CPU types used for controller and login nodes.
    "ml.c5.large": InstanceInfo(hourly_usd=0.119),
    "ml.c5.xlarge": InstanceInfo(hourly_usd=0.238),
    "ml.c5.2xlarge": InstanceInfo(hourly_usd=0.476),
    "ml.c5.4xlarge": InstanceInfo(hourly_usd=0.952),
    "ml.m5.large": InstanceInfo(hourly_usd=0.134),
    "ml.m5.xlarge": InstanceInfo(hourly_usd=0.269),
    "ml.m5.2xlarge": InstanceInfo(hourly_usd=0.538),
    "ml.m5.4xlarge": InstanceInfo(hourly_usd=1.075),
    "ml.t3.medium": InstanceInfo(hourly_usd=0.058),
}

# Dense bf16 tensor-core peak per accelerator (FLOP/s) from the data sheets, the divisor of MFU
# (half the "with sparsity" figure where a sheet gives only that). Matched against the device
# name longest key first, so the PCIe and NVL boards of the H100 are not taken for the SXM one.
PEAK_BF16_FLOPS: dict[str, float] = {
    "A10G": 125e12,
    "L4": 121e12,
    "L40S": 362e12,
    "A100": 312e12,
    "H100": 989e12,
    "H100 PCIE": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
}

# Where a table figure is not the accelerator's own, MFU says so next to its value.
PEAK_CAVEATS: dict[str, str] = {
    # NVIDIA publishes no A10G data sheet; it runs at lower clocks than the A10, so the
    # true peak is below this and MFU against it reads low.
    "A10G": "the A10's data-sheet figure, above the A10G's real peak: MFU reads low",
}


# Memory per accelerator as the driver reports it (nvidia-smi's total, MiB, ECC on), by
# (accelerator, nominal GiB): a "24 GB" A10G shows 23,028 MiB, an H100 80GB HBM3 81,559 MiB.
DRIVER_MEMORY_MIB: dict[tuple[str, int], int] = {
    ("A10G", 24): 23028,
    ("L4", 24): 23034,
    ("L40S", 48): 46068,
    ("A100", 40): 40960,
    ("A100", 80): 81920,
    ("H100", 80): 81559,
    ("H200", 141): 143771,
}
# What a training process cannot give to torch's allocator: the CUDA context (kernels and
# libraries loaded on first use, ~0.3-0.4 GiB with CUDA 12's lazy loading) and NCCL's
# communication buffers (NCCL_BUFFSIZE, 4 MiB per channel and peer). An estimate, not a
# measurement: the usable figure is the driver's total less this.
CONTEXT_AND_NCCL_GIB = 0.5


def usable_gpu_memory_gib(info: InstanceInfo) -> float | None:
    """GiB per accelerator that tensors of one training process can use; None when unknown.

    A10G: 23,028 MiB reported = 22.49 GiB, less 0.5 GiB of CUDA context and NCCL buffers = 22.0 GiB.
    """
    reported = DRIVER_MEMORY_MIB.get((info.accelerator, info.gpu_memory_gib))
    if reported is None:
        return None
    return reported / 1024 - CONTEXT_AND_NCCL_GIB


def instance_info(instance_type: str) -> InstanceInfo:
    """Facts about ``instance_type``; an unknown type is treated as CPU-only with no price."""
    return _KNOWN.get(instance_type, InstanceInfo())


def known_instance_types() -> list[str]:
    """Every instance type this table describes (for "did you mean ...?" suggestions)."""
    return sorted(_KNOWN)


_ACCELERATED_FAMILY = re.compile(r"^ml\.(p|g|gr|trn)\d")


def has_accelerators(instance_type: str) -> bool:
    """GPUs or Trainium, by family, so types newer than the table above (p6, g7e, ...) count too."""
    return bool(_ACCELERATED_FAMILY.match(instance_type))
