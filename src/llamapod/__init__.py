"""llamapod: Llama FSDP training on a laptop, one GPU, any Slurm cluster, or SageMaker HyperPod."""

__version__ = "0.1.0"
