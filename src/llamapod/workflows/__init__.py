"""What combines the floors below: running a job on a cluster, connecting to one, its Python environment."""
