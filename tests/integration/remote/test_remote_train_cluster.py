"""`llamapod train --cluster` end to end against real parts: an OpenSSH server standing in
for the head node, the real single-node Slurm behind it, a temporary folder for /fsx.

The environment step uses the [remote] settings a test needs (base_python = this
interpreter with its site-packages visible, no package index), but the wheel of this
checkout is really built, uploaded over ssh and installed into a fresh virtual
environment on the "head node" side, and the job imports llamapod from there.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.data import make_documents, train_small_bpe
from llamapod.cli.main import main

pytestmark = [pytest.mark.sshd, pytest.mark.slurm, pytest.mark.slow]

TINY = ["--max_context_width=32", "--hidden_width=64", "--num_layers=2", "--num_heads=4",
        "--num_key_value_heads=2", "--llama_intermediate_size=96", "--model_type=llama_v2", "--train_batch_size=2",
        "--val_batch_size=2", "--validation_batches=1", "--validation_freq=3", "--checkpoint_freq=3",
        "--max_steps=6", "--logging_freq=1", "--bf16=0", "--lr_decay_style=constant", "--warmup=1"]


def _cli(capfd, *args):
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def checkout_wheel() -> Path:
    """This checkout's wheel, built (or found in the cache) once per session.

    Pinned for the session so the two runs below install the same bytes even while
    the source tree is being edited; building it is llamapod's own code path.
    """
    from llamapod.workflows.environment import local_wheel

    return local_wheel()


def _write_config(path: Path, remote: dict, slurm: dict) -> None:
    lines = ["[remote]"] + [f"{k} = {json.dumps(v)}" for k, v in remote.items()]
    lines += ["", "[slurm]"] + [f"{k} = {json.dumps(v)}" for k, v in slurm.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def laptop(tmp_path, monkeypatch, slurm_head_node, checkout_wheel):
    """The laptop's working folder: llamapod.toml pointing at the head node, local data and tokenizer."""
    fsx = tmp_path / "fsx"
    fsx.mkdir()
    remote = slurm_head_node.remote_table(fsx, base_python=sys.executable, system_site_packages=True,
                                          pip_no_index=True, wheel=str(checkout_wheel))
    _write_config(tmp_path / "llamapod.toml", remote, {"time": "10:00"})
    # A job whose environment set-up fails on the cluster (a module that does not exist there).
    _write_config(tmp_path / "broken.toml", remote,
                  {"time": "10:00", "env_setup": ["echo 'module load cuda/99.9: no such module' >&2", "exit 3"]})
    docs = make_documents(300, seed=3)
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    train_small_bpe(tmp_path / "tok", docs, vocab_size=300)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_remote_train_on_cluster_streams_progress_and_pull_brings_results_home(laptop, capfd, slurm):
    fsx = laptop / "fsx"
    code, out, err = _cli(capfd, "train", "--config", "llamapod.toml", "--cluster", "demo", *TINY,
                          "--dataset=corpus.jsonl", "--tokenizer=tok/tokenizer.json", "--run_dir=exp1")
    assert code == 0, err

    # The wheel was uploaded and installed into a fresh environment on /fsx, which the job used.
    (env_dir,) = [p for p in (fsx / "llamapod" / "envs").iterdir()]
    marker = json.loads((env_dir / ".llamapod-ready").read_text())
    assert marker["llamapod_path"].startswith(str(env_dir / "lib"))
    assert re.search(r"uploading llamapod-[\w.]+-py3-none-any\.whl to " + re.escape(str(fsx / "llamapod/wheels")), err)
    run_dir = fsx / "llamapod" / "runs" / "exp1"
    script = (run_dir / "job.sbatch").read_text()
    assert f"source {env_dir}/bin/activate" in script and f"{env_dir}/bin/python -m torch.distributed.run" in script
    assert "--nproc_per_node 2" in script and "--auto-resume" not in script

    # Local inputs were synced and the job read them from the cluster side.
    assert (run_dir / "inputs" / "dataset" / "corpus.jsonl").read_text() == (laptop / "corpus.jsonl").read_text()
    assert (run_dir / "inputs" / "tokenizer" / "tokenizer.json").is_file()
    assert (run_dir / "llamapod.toml").read_text() == (laptop / "llamapod.toml").read_text()
    assert f"--dataset={run_dir}/inputs/dataset/corpus.jsonl" in script

    # Progress was streamed back while the job ran, ending in success.
    match = re.search(r"submitted job (\d+) on demo", err)
    assert match, err
    assert re.search(r"^step 6/6 \| loss ", err, re.M), err
    assert f"job {match.group(1)} finished on demo" in err
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["event"] == "done"

    # The Slurm commands reach the same head node from the laptop.
    code, out, err = _cli(capfd, "logs", "--cluster", "demo", match.group(1))
    assert code == 0, err
    assert re.search(r"^step 6/6 \| loss ", out, re.M), out
    code, out, err = _cli(capfd, "jobs", "--cluster", "demo")
    assert code == 0 and match.group(1) in out, err

    code, out, err = _cli(capfd, "pull", "--cluster", "demo", "-f", "llamapod.toml", "exp1")
    assert code == 0, err
    home = laptop / "runs" / "exp1"
    assert out.splitlines() == [str(Path("runs/exp1/metrics.jsonl")), str(Path("runs/exp1/metrics.png"))]
    assert (home / "metrics.jsonl").read_bytes() == (run_dir / "metrics.jsonl").read_bytes()
    assert (home / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --model: the newest checkpoint is exported on the cluster (through srun, with the run's
    # own environment), then copied home.
    code, out, err = _cli(capfd, "pull", "--cluster", "demo", "-f", "llamapod.toml", "exp1", "--model")
    assert code == 0, err
    assert "exporting the newest checkpoint of exp1" in err
    assert json.loads((home / "hf" / "config.json").read_text())["num_hidden_layers"] == 2
    assert list((home / "hf").glob("*.safetensors"))

    # A job that fails on the cluster: one line, the tail of its error log, the next step.
    # The environment is reused this time.
    code, out, err = _cli(capfd, "train", "--config", "broken.toml", "--cluster", "demo", *TINY, "--run_dir=broken")
    assert code == 1
    assert f"reusing the Python environment {env_dir}" in err
    job = re.search(r"submitted job (\d+)", err).group(1)
    assert "  | module load cuda/99.9: no such module" in err.splitlines()
    errors = [line for line in err.splitlines() if line.startswith(("error:", "  hint:"))]
    assert re.fullmatch(rf"error: job {job} ended FAILED on cluster demo( \(\w+\))?", errors[0]), err
    assert errors[1] == (f"  hint: read its logs with `llamapod logs --cluster demo {job}`, fix the cause, "
                         "and re-run: it resumes from the last checkpoint")

    code, _, err = _cli(capfd, "pull", "--cluster", "demo", "-f", "llamapod.toml", "exp9")
    assert code == 1
    assert err.splitlines() == [f"error: no run 'exp9' on root@127.0.0.1 (looked in {fsx}/llamapod/runs/exp9)",
                                "  hint: runs there, newest first: broken, exp1"]


def test_remote_train_on_a_full_fsx_stops_before_uploading(laptop, capfd):
    tiny = laptop / "tiny-fsx"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        config = (laptop / "llamapod.toml").read_text().replace(json.dumps(str(laptop / "fsx")), json.dumps(str(tiny)))
        (laptop / "llamapod.toml").write_text(config)
        code, _, err = _cli(capfd, "train", "--config", "llamapod.toml", "--cluster", "demo", *TINY)
        assert code == 1
        lines = [line for line in err.splitlines() if line.startswith(("error:", "  hint:"))]
        assert lines == [
            f"error: {tiny} on root@127.0.0.1 has 1 MiB free; the environment needs 64 MiB",
            f"  hint: free space there (e.g. delete old runs under {tiny}/llamapod/runs) or grow the FSx file "
            "system, then re-run"]
        assert not (tiny / "llamapod" / "wheels").exists()
    finally:
        subprocess.run(["umount", str(tiny)], check=True)
