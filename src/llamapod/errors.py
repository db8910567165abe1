"""The one error hierarchy.

Library code raises these; only the command line (the ``cli`` package) turns them into a red line, a hint
and an exit code. Every error carries the problem (``message``) and, where there is
one, the fix (``hint``), so the user never has to read a traceback.
"""

from __future__ import annotations


class LlamapodError(Exception):
    """Base of every error llamapod reports to a user."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(LlamapodError):
    """A config file, flag or value is missing, malformed or inconsistent."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, problems: list[str] | None = None):
        super().__init__(message, hint)
        # Validation collects every problem at once (ParallelCluster-style) so the user
        # fixes the file in one pass instead of one error per run.
        self.problems = problems or []


class CloudError(LlamapodError):
    """An AWS call failed; ``op`` is the API operation, ``code`` AWS's error code."""

    def __init__(self, op: str, code: str, message: str, hint: str | None = None):
        super().__init__(f"{op} failed: {code}: {message}", hint)
        self.op = op
        self.code = code
        self.aws_message = message


class AwsSetupError(CloudError):
    """This machine's AWS setup (profile, credentials, config files, region) cannot be used.

    Raised before any request is sent, so it names the local setting to fix rather than
    an API operation.
    """

    def __init__(self, code: str, message: str, hint: str | None = None):
        LlamapodError.__init__(self, message, hint)
        self.op = "configure"
        self.code = code
        self.aws_message = message


class ClusterStateError(LlamapodError):
    """The cluster (or one of its resources) is not in a state that allows the request."""


class CheckpointError(LlamapodError):
    """A checkpoint is missing, partial, corrupted or incompatible with the run."""


class DataError(LlamapodError):
    """A corpus, dataset, tokenizer or token shard cannot be used."""


class SlurmError(LlamapodError):
    """Slurm rejected a request, or is not reachable."""


class RemoteError(LlamapodError):
    """A command on a remote host could not be run (connection, transport, disk)."""


class TrainingError(LlamapodError):
    """Training could not start or continue (world size, devices, numerics)."""


class WorkerFailed(TrainingError):
    """A training worker process failed; the exit code is the worker's own."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1):
        super().__init__(message, hint)
        self.exit_code = exit_code


class Interrupted(LlamapodError):
    """The user (Ctrl-C) or a scheduler (SIGTERM) stopped the command; exit code 128 + signal."""

    def __init__(self, message: str, hint: str | None = None, signum: int = 2):
        super().__init__(message, hint)
        self.signum = signum
        self.exit_code = 128 + signum
