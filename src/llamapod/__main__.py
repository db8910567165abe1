"""``python -m llamapod``: the command line; ``python -m llamapod worker ...``: one training
worker, as `llamapod train`, torchrun and srun start it."""

import sys

if sys.argv[1:2] == ["worker"]:
    from llamapod.cli.worker import run as run_worker

    run_worker(sys.argv[2:])
else:
    from llamapod.cli.main import run

    run()
