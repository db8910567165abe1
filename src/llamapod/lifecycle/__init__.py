"""The node lifecycle HyperPod runs on every node as it boots (``on_create.sh``).

Two things belong to the cloud side: :func:`upload_files` lists what `llamapod up` uploads
to the lifecycle bucket, and ``provisioning.py`` is the contract of provisioning_parameters.json
that ``cloud/plan.py`` writes with and the nodes read with. The node-side modules next to this
file (``node_*.py``, ``provisioning.py``) run on bare nodes with /usr/bin/python3 and import
each other as top-level modules; nothing here imports them.
"""

from __future__ import annotations

from pathlib import Path

LIFECYCLE_DIR = Path(__file__).resolve().parent
ENTRY_POINT = "on_create.sh"

# Everything node_setup.py needs at run time; provisioning_parameters.json is added by the uploader.
NODE_FILES = (
    ENTRY_POINT,
    "node_setup.py",
    "node_settings.py",
    "node_system.py",
    "node_cluster.py",
    "node_storage.py",
    "node_users.py",
    "node_slurm.py",
    "node_accounting.py",
    "provisioning.py",
)


def upload_files() -> list[tuple[Path, str]]:
    """Local files and their keys under the bucket's lifecycle prefix (``on_create.sh`` at the root)."""
    return [(LIFECYCLE_DIR / name, name) for name in NODE_FILES]
