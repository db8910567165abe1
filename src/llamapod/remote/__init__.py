"""Running commands where the cluster is: this machine (LocalShell) or a head node over SSH."""
