from llamapod.cli.main import run

run()
