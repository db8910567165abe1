"""What a run leaves behind survives: its "train longer" command, a damaged metrics.jsonl, a full disk.

The runs are the real `llamapod train` with one worker in this process (no worker start-up
to pay for); the full disk is a real tmpfs of a few MiB.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

FLAGS = ["--nproc", "1", "--preset", "tiny", "--max_context_width", "32", "--train_batch_size", "2",
         "--validation_batches", "0", "--logging_freq", "1", "--lr", "1e-3", "--seed", "5", "--num_layers", "3"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _train_longer(out: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.endswith("(train longer)"))
    return shlex.split(line.removesuffix("(train longer)").strip())


def test_train_longer_resumes_the_same_run_through_a_damaged_metrics_file(here, run_cli):
    code, out, err = run_cli("train", *FLAGS, "--max_steps", "3", "--run_dir", "run one")
    assert code == 0, err
    command = _train_longer(out)
    assert command[:2] == ["llamapod", "train"]
    assert {"--preset=tiny", "--num_layers=3", "--lr=0.001", "--seed=5", "--max_context_width=32",
            "--run_dir=run one", "--resume_from_checkpoint=run one/checkpoints", "--max_steps=6"} <= set(command)

    # A run killed while writing its metrics leaves a cut-short last line.
    metrics = here / "run one" / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text + text.splitlines()[-1][:17])

    code, out, err = run_cli(*command[1:])
    assert code == 0, err
    assert "resumed from run one/checkpoints/step_00000003 (step 3)" in err
    assert f"warning: run one/metrics.jsonl: skipped 1 damaged line (line {len(text.splitlines()) + 1}): " in err
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.endswith("}")]
    assert [r["step"] for r in records if "tokens_per_s" in r] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["event"] == "done" and records[-1]["step"] == 6
    assert (here / "run one" / "metrics.png").stat().st_size > 10_000


def test_a_full_disk_during_a_save_removes_the_partial_step_and_says_what_is_needed(here, run_cli, tmpfs):
    # The same run with room to spare: what its checkpoint really takes.
    code, _, err = run_cli("train", *FLAGS, "--max_steps", "2", "--run_dir", "roomy")
    assert code == 0, err
    actual = sum(p.stat().st_size for p in (here / "roomy" / "checkpoints" / "step_00000002").rglob("*")
                 if p.is_file())

    # A real file system of 6 MiB: the tiny model's weights and AdamW state take about 14 MiB.
    small = tmpfs("6m")
    code, out, err = run_cli("train", *FLAGS, "--max_steps", "2", "--run_dir", "run",
                             "--checkpoint_dir", str(small / "ck"))
    lines = err.splitlines()
    assert code == 1, err
    found = re.fullmatch(rf"error: disk full while saving checkpoint step_00000002 in {re.escape(str(small / 'ck'))}: "
                         r"a checkpoint of this run needs about ([\d.]+) MiB, 6\.0 MiB were free", lines[-2])
    assert found, err
    assert abs(float(found.group(1)) * 2**20 - actual) < 0.1 * actual, (found.group(1), actual)
    assert lines[-1] == ("  hint: free space there (--keep_last N keeps fewer checkpoints) or point --checkpoint_dir "
                         "at a larger file system; the run resumes from its newest complete checkpoint")
    assert "Traceback" not in err and "Exception in thread" not in err
    assert [p.name for p in (small / "ck").iterdir() if p.name.startswith("step_")] == [], "no step_*.tmp left"
    assert (here / "run" / "metrics.jsonl").read_text().count('"step": 2') == 1, "the metrics are kept"
