"""Which worker failure is reported, and the commands a run prints to continue itself."""

from __future__ import annotations

import shlex
import signal

import pytest

from llamapod.config.train_flags import parse_train_args
from llamapod.train.failures import (ERROR_FILE_ENV, Failure, WorkerRecord, describe, first_failure, read_record,
                                     record_failure, stop_signal)
from llamapod.train.resume import NPROC_ENV, resume_command


def _record(message: str, time: float, printed: bool = False, code: int = 1) -> WorkerRecord:
    return WorkerRecord(message, "the fix", code, time, printed)


def test_a_worker_records_its_failure_where_the_agent_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "attempt_0" / "1" / "error.json"
    monkeypatch.setenv(ERROR_FILE_ENV, str(path))
    record_failure("checkpoint x is corrupted", "delete x", 1, printed=False)
    record = read_record(str(path))
    assert (record.message, record.hint, record.exit_code, record.printed) == (
        "checkpoint x is corrupted", "delete x", 1, False)
    # torch's agent reads the same file: its fields must be where ErrorHandler puts them.
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    failure = ProcessFailure(local_rank=1, pid=7, exitcode=1, error_file=str(path))
    assert failure.message["message"] == "checkpoint x is corrupted"
    assert read_record(str(tmp_path / "missing.json")) is None


def test_a_signal_death_comes_before_the_errors_it_caused():
    killed = Failure(1, 11, -signal.SIGKILL, None, None)
    peer_lost = Failure(0, 10, 1, "e0", _record("rank 0 lost its connection to another rank", time=5.0))
    stopped = Failure(2, 12, -signal.SIGTERM, None, None)
    assert first_failure([peer_lost, killed, stopped]) is killed


def test_the_earliest_error_wins_and_rank_0_speaks_for_an_error_every_rank_hit():
    early = Failure(1, 11, 1, "e1", _record("rng of rank 1 is damaged", time=1.0))
    late = Failure(0, 10, 1, "e0", _record("rank 0 lost its connection to another rank", time=2.0))
    assert first_failure([late, early]) is early
    same_1 = Failure(1, 11, 2, "e1", _record("folder in use", time=1.0))
    same_0 = Failure(0, 10, 2, "e0", _record("folder in use", time=1.5, printed=True))
    assert first_failure([same_1, same_0]) is same_0


def test_workers_that_were_all_asked_to_stop_are_an_interruption():
    assert stop_signal([Failure(0, 1, 130, None, None), Failure(1, 2, -signal.SIGINT, None, None)]) == signal.SIGINT
    assert stop_signal([Failure(0, 1, -signal.SIGTERM, None, None)]) == signal.SIGTERM
    assert stop_signal([Failure(0, 1, 130, None, None), Failure(1, 2, 1, None, None)]) is None


def test_descriptions_name_the_rank_the_cause_and_the_way_on():
    resume = "llamapod train --run_dir=r"
    other = describe(Failure(1, 42, -signal.SIGSEGV, None, None), oom_killed=False, resume=resume)
    assert (other.message, other.hint, other.exit_code) == (
        "rank 1 (pid 42) died from SIGSEGV", f"its output is above; resume with: {resume}", 139)
    bug = describe(Failure(1, 42, 70, "/tmp/e.json", _record("rank 1: internal error: KeyError: 'x'", 1.0, code=70)),
                   oom_killed=False, resume=resume)
    assert (bug.message, bug.hint, bug.exit_code) == ("rank 1: internal error: KeyError: 'x'",
                                                      "its traceback is in /tmp/e.json; please report it", 70)
    silent = describe(Failure(0, 42, 3, None, None), oom_killed=False, resume=resume)
    assert silent.message == "rank 0 exited with code 3 without a message" and silent.exit_code == 3


def test_the_resume_command_rebuilds_the_run_and_quotes_it(monkeypatch):
    monkeypatch.delenv(NPROC_ENV, raising=False)
    spec = parse_train_args(["--preset", "tiny", "--num_layers", "3", "--lr", "1e-3", "--run_dir", "my runs/a b",
                             "--dataset", "data/it's.txt"])
    words = shlex.split(resume_command(spec, max_steps=240))
    assert words[:2] == ["llamapod", "train"]
    assert words[-3:] == ["--run_dir=my runs/a b", "--resume_from_checkpoint=my runs/a b/checkpoints",
                          "--max_steps=240"]
    # Pasted into a shell, it is the same run, resumed from its own folder, with more steps.
    assert parse_train_args(words[2:]).model_dump() == spec.model_copy(
        update={"resume_from_checkpoint": "my runs/a b/checkpoints", "max_steps": 240}).model_dump()
    monkeypatch.setenv(NPROC_ENV, "4")
    assert shlex.split(resume_command(spec))[2:4] == ["--nproc", "4"]
    with pytest.raises(ValueError):
        resume_command(parse_train_args([]))
