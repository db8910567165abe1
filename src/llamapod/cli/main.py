"""The ``llamapod`` command.

Subcommands live in their own modules and are imported only when invoked, so
``llamapod --help`` imports neither torch nor boto3 and answers in milliseconds.
"""

from __future__ import annotations

import errno
import importlib
import sys

import click

from llamapod import __version__
from llamapod.cli import ui

# name -> (module, attribute, one-line help shown by `llamapod --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("llamapod.cli.train", "train", "Train a Llama model: locally, with --slurm, or on --cluster NAME."),
    "sample": ("llamapod.cli.sample_cmds", "sample", "Generate text from a checkpoint."),
    "export": ("llamapod.cli.checkpoint_cmds", "export", "Export a checkpoint to Hugging Face or one file."),
    "data": ("llamapod.cli.data_cmds", "data", "Prepare and inspect pre-tokenized datasets."),
    "init": ("llamapod.cli.cloud_cmds", "init", "Write a commented llamapod.toml for a new cluster."),
    "doctor": ("llamapod.cli.cloud_cmds", "doctor", "Check credentials, quotas and permissions before `up`."),
    "plan": ("llamapod.cli.cloud_cmds", "plan", "Show and write everything `up` would create, with its cost."),
    "up": ("llamapod.cli.cluster_cmds", "up", "Create the network, FSx, role, bucket and HyperPod cluster."),
    "status": ("llamapod.cli.cluster_cmds", "status", "Show the cluster, its nodes, FSx and cost so far."),
    "down": ("llamapod.cli.cluster_cmds", "down", "Delete everything `up` created and prove nothing is left."),
    "operator-policy": ("llamapod.cli.cloud_cmds", "operator_policy", "Print the least-privilege IAM policy llamapod needs."),
    "jobs": ("llamapod.cli.slurm_cmds", "jobs", "List Slurm jobs (locally or on --cluster NAME)."),
    "logs": ("llamapod.cli.slurm_cmds", "logs", "Show (or follow with -f) a job's log and last metrics."),
    "cancel": ("llamapod.cli.slurm_cmds", "cancel", "Cancel a Slurm job."),
    "ssh": ("llamapod.cli.remote_cmds", "ssh", "Open a shell or run a command on a cluster node."),
    "pull": ("llamapod.cli.remote_cmds", "pull", "Copy a run's metrics, plot and model back from the cluster."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or "a module"
            return _unavailable_command(name, missing)
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, _, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            import difflib

            name = args[0] if args else ""
            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            if close and "No such command" in str(exc):
                raise click.UsageError(f"No such command '{name}'. Did you mean '{close[0]}'?", ctx) from None
            raise


def _unavailable_command(name: str, missing: str) -> click.Command:
    """A stand-in that explains which extra to install when a command's deps are absent."""
    extra = "train" if missing.split(".")[0] in {"torch", "numpy", "tokenizers", "safetensors", "sentencepiece"} else None

    @click.command(name=name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def _missing() -> None:
        hint = f"pip install 'llamapod[{extra}]'" if extra else f"pip install {missing.split('.')[0]}"
        ui.error(f"`llamapod {name}` needs the Python package '{missing}', which is not installed", hint)
        sys.exit(2)

    return _missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llamapod")
@click.option("--debug", is_flag=True, help="Show tracebacks and AWS/Slurm calls.")
@click.option("--quiet", "-q", is_flag=True, help="Only errors and results.")
def cli(debug: bool, quiet: bool) -> None:
    """From an empty AWS account to Llama training on SageMaker HyperPod, and back to zero.

    Try `llamapod train` first: it trains a small Llama on this machine in minutes.
    """
    ui.configure(debug=debug, quiet=quiet)


def run() -> None:
    """The ``llamapod`` command: ``main``, then an exit as clean as a torchrun worker's.

    A run that trained in this process (``--nproc 1``) destroyed its process group, but a
    C++ static destructor of gloo can still abort the interpreter's teardown of a finished
    run; such a process ends like a worker does, after flushing its output.
    """
    code = main()
    if "torch.distributed" in sys.modules:
        from llamapod.train.parallel import exit_without_teardown

        exit_without_teardown(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns every failure into one line and an exit code."""
    from llamapod.errors import LlamapodError

    args = sys.argv[1:] if argv is None else argv
    if "--debug" in args:
        ui.configure(debug=True)
    ui.install_reporter()
    try:
        _refuse_nul(args)
        # Without standalone mode click returns (not raises) the code of a ctx.exit(n) / Exit(n).
        code = cli.main(args=args, prog_name="llamapod", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        ui.error(exc.format_message(), _usage_hint(exc))
        return exc.exit_code
    except click.exceptions.Abort:
        ui.error("aborted")
        return 130
    except LlamapodError as exc:
        if ui.debug_enabled():
            import traceback

            traceback.print_exc()
        ui.error(exc.message, exc.hint)
        for problem in getattr(exc, "problems", []) or []:
            ui.info(f"  - {ui.one_line(problem)}")
        return exc.exit_code
    except KeyboardInterrupt:
        ui.error("interrupted", "run the same command again: it continues where it stopped")
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            return _internal_error(exc)
        if ui.debug_enabled():
            raise
        # Permissions, read-only mounts and full disks are this machine's state, not a bug.
        where = f": {exc.filename}" if exc.filename else ""
        from llamapod.paths import dead_link

        dead = dead_link(exc.filename)
        if dead is not None:
            ui.error(f"{dead} is a broken or looping symbolic link ({exc.strerror}{where})",
                     "point the link at an existing folder, remove it, or choose another path")
            return 1
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            hint = "a file stands where llamapod needs a folder: move it away, or choose another path"
        else:
            hint = "check the permissions and free space there, or choose another path"
        ui.error(f"{exc.strerror}{where}", hint)
        return 1
    except Exception as exc:  # the last line of defence: never a bare traceback
        return _internal_error(exc)


def _refuse_nul(args: list[str]) -> None:
    # A shell cannot pass one, but a script calling main() can; every path call would fail on it.
    for arg in args:
        if "\0" in arg:
            from llamapod.validate import shown

            raise click.UsageError(f"argument {shown(arg)} holds a NUL character")


# ENOTDIR and EEXIST: a file where a folder belongs (a path component, or what mkdir would make).
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST,
                       errno.ELOOP}


def _internal_error(exc: Exception) -> int:
    if ui.debug_enabled():
        raise exc
    lines = str(exc).strip().splitlines()
    ui.error(f"internal error: {type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "),
             "re-run with --debug for the traceback, and report it")
    return 70


def _usage_hint(exc: click.ClickException) -> str | None:
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        return f"see `{ctx.command_path} --help`"
    return "see `llamapod --help`"


if __name__ == "__main__":
    run()
