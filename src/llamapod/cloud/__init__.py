"""The AWS half: build, reach and tear down a HyperPod Slurm cluster. Never imports torch."""
