"""The FSDP2 Llama trainer.

Importing this package is cheap and torch-free (``presets`` is plain Python); the
torch parts live in ``model``, ``parallel``, ``loop`` and are imported where used.
Run a worker with ``python -m llamapod worker [flags]`` (under torchrun or srun).
"""
