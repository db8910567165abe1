"""Slurm: render a training job as an sbatch script (``render``), and submit, follow and
cancel it through a Shell (``jobs``). ``spec`` holds the ``[slurm]`` settings."""
