"""Random strings into every value the sbatch renderer writes, and the script read back two ways:
as sbatch reads its header, and as bash runs it (with srun, mkdir and hostname stubbed).

Whatever the value, either it is refused with one ConfigError line, or:
- every #SBATCH line comes before the first command (sbatch ignores those after it) and each
  option reads back as the value given;
- ``bash -n`` accepts the script, and running it calls srun exactly once with the trainer's
  flags as rendered, the interpreter and exported variables intact, and nothing else runs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.hostile import hostile_text
from llamapod import validate
from llamapod.config.train_flags import build_spec
from llamapod.errors import ConfigError, LlamapodError
from llamapod.slurm.render import job_paths, job_train_args, render_sbatch
from llamapod.slurm.spec import SlurmJob, build_slurm_job

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

TRAIN_FIELDS = ("checkpoint_dir", "resume_from_checkpoint", "run_dir", "dataset", "tokenizer", "text_field",
                "dataset_config_name", "init_from")
JOB_FIELDS = ("job_name", "partition", "account", "time", "output_dir", "workdir", "python")
BASE_JOB = {"job_name": "q", "output_dir": "/fsx/runs", "hyperpod": False, "python": "/usr/bin/python3"}
# Hostile strings, and strings of the grammars the job's values follow, so that many
# examples get past validation to the script.
job_values = st.one_of(hostile_text, st.from_regex(validate.SLURM_LIST, fullmatch=True),
                       st.from_regex(r"/[\w./-]{0,30}", fullmatch=True))
RANDOM_RUN = dict(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Stubs for the only external commands the script runs. srun records its argv and the
# exported variable the test sets; anything else the script tried to run is not on PATH.
STUBS = {
    "srun": '#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done > "$STUB_OUT/argv"\n'
            'printf "%s" "$X_VALUE" > "$STUB_OUT/x_value"\n',
    "mkdir": '#!/bin/sh\nfor a in "$@"; do printf "%s\\0" "$a"; done >> "$STUB_OUT/mkdir"\n',
    "hostname": "#!/bin/sh\necho node-1\n",
}


@pytest.fixture(scope="module")
def stub_bin(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("stubs")
    for name, text in STUBS.items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)
    return directory


def sbatch_header(text: str) -> list[list[str]]:
    """The #SBATCH options sbatch reads, each as its words, and a check that none come later.

    sbatch reads #SBATCH lines up to the first line that is neither blank nor a comment
    (Slurm's sbatch(1): "before any executable commands"); within one it splits words on
    whitespace, honours quotes and backslashes, and stops at an unquoted '#'.
    """
    lines = text.split("\n")
    assert lines[0] == "#!/bin/bash"
    options: list[list[str]] = []
    for number, line in enumerate(lines[1:], start=1):
        if line.strip() and not line.startswith("#"):
            later = [rest for rest in lines[number:] if rest.lstrip().startswith("#SBATCH")]
            assert later == [], f"#SBATCH lines after the first command are ignored by sbatch: {later}"
            return options
        if line.startswith("#SBATCH"):
            options.append(_sbatch_words(line[len("#SBATCH"):]))
    raise AssertionError("the script runs no command")


def _sbatch_words(rest: str) -> list[str]:
    words, word, quote, escaped, started = [], "", "", False, False
    for char in rest:
        if escaped:
            word, escaped = word + char, False
        elif char == "\\":
            escaped, started = True, True
        elif quote:
            if char == quote:
                quote = ""
            else:
                word += char
        elif char in "'\"":
            quote, started = char, True
        elif char == "#":
            break
        elif char.isspace():
            if started:
                words.append(word)
            word, started = "", False
        else:
            word, started = word + char, True
    if started:
        words.append(word)
    return words


def run_script(text: str, stub_bin: Path, workdir: Path) -> tuple[list[str], str]:
    """bash -n, then the script itself with stubs: srun's argv and the exported X_VALUE it saw."""
    script = workdir / "job.sbatch"
    script.write_bytes(text.encode())
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    out = workdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    env = {"PATH": str(stub_bin), "STUB_OUT": str(out), "SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_JOB_NODELIST": "node-1"}
    proc = subprocess.run(["/bin/bash", str(script)], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "command not found" not in proc.stderr
    # Bytes, not text mode: universal newlines would turn a '\r' in a value into '\n'.
    argv = (out / "argv").read_bytes().decode().split("\0")[:-1]
    return argv, (out / "x_value").read_bytes().decode()


def _render_or_refuse(spec_values: dict, job_values: dict) -> tuple | None:
    try:
        spec = build_spec(spec_values)
        job = build_slurm_job({**BASE_JOB, **job_values})
        return spec, job, render_sbatch(spec, job)
    except LlamapodError as err:
        assert isinstance(err, ConfigError), repr(err)
        assert "\n" not in err.message, err.message
        return None


def _expected_srun_argv(spec, job) -> list[str]:
    return [job.python, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
            str(job.workers_per_node), "--rdzv_id", "7", "--rdzv_backend", "c10d", "--rdzv_endpoint",
            f"node-1:{job.rdzv_port}", "-m", "llamapod", "worker", *job_train_args(spec, job)]


@settings(**RANDOM_RUN)
@given(field=st.sampled_from(TRAIN_FIELDS), value=hostile_text)
def test_training_values_reach_the_trainer_intact(stub_bin, tmp_path, field, value):
    rendered = _render_or_refuse({field: value}, {})
    if rendered is None:
        return
    spec, job, text = rendered
    header = sbatch_header(text)
    run_dir = job_paths(spec, job).run_dir
    assert ["--output=" + f"{run_dir}/slurm-%j.out"] in header
    argv, _ = run_script(text, stub_bin, tmp_path)
    assert argv == _expected_srun_argv(spec, job)
    assert f"--{field}={value}" in argv or field in ("run_dir", "checkpoint_dir", "resume_from_checkpoint")
    assert not (tmp_path / "pwned").exists()


@settings(**RANDOM_RUN)
@given(field=st.sampled_from(JOB_FIELDS), value=job_values)
def test_job_values_stay_on_their_sbatch_lines(stub_bin, tmp_path, field, value):
    rendered = _render_or_refuse({}, {field: value})
    if rendered is None:
        return
    spec, job, text = rendered
    header = sbatch_header(text)
    flag = {"job_name": "job-name", "workdir": "chdir"}.get(field, field)
    if field == "output_dir":
        assert [f"--output={job_paths(spec, job).run_dir}/slurm-%j.out"] in header
    elif field != "python":
        assert [f"--{flag}={value}"] in header
    argv, _ = run_script(text, stub_bin, tmp_path)
    assert argv == _expected_srun_argv(spec, job)


@settings(**RANDOM_RUN)
@given(value=hostile_text)
def test_exported_values_arrive_unchanged(stub_bin, tmp_path, value):
    rendered = _render_or_refuse({}, {"env": {"X_VALUE": value}})
    if rendered is None:
        return
    spec, job, text = rendered
    sbatch_header(text)
    _, seen = run_script(text, stub_bin, tmp_path)
    assert seen == value


@settings(**RANDOM_RUN)
@given(field=st.sampled_from(("workdir", "python", "job_name", "partition")), value=job_values)
def test_values_filled_in_after_validation_are_checked_where_they_are_written(stub_bin, tmp_path, field, value):
    # `llamapod train --slurm` fills workdir and python from this machine with model_copy,
    # which skips the model's validators: the renderer checks them itself.
    spec = build_spec({})
    job = SlurmJob(**BASE_JOB).model_copy(update={field: value})
    try:
        text = render_sbatch(spec, job)
    except LlamapodError as err:
        assert isinstance(err, ConfigError) and "\n" not in err.message
        return
    sbatch_header(text)
    argv, _ = run_script(text, stub_bin, tmp_path)
    assert argv == _expected_srun_argv(spec, job)


@pytest.mark.parametrize("values", [
    {"checkpoint_dir": "x\ntouch pwned"}, {"checkpoint_dir": "-rf"}, {"run_dir": "/fsx/r#x"},
    {"run_dir": "/fsx/a\n#SBATCH --x"},
])
def test_newlines_and_comment_marks_cannot_leave_the_header(values):
    with pytest.raises(ConfigError) as err:
        render_sbatch(build_spec(values), SlurmJob(**BASE_JOB))
    assert "\n" not in err.value.message


@pytest.mark.parametrize("field, value", [
    ("job_name", "q\n"), ("partition", "dev\n"), ("account", "-x"), ("python", "-x"), ("workdir", "/a#b"),
    ("env", {"X\n": "1"}), ("env", {"X": "a\nb"}), ("sbatch_options", ["--mem=0\r"]), ("env_setup", ["a\x00"]),
])
def test_the_slurm_table_refuses_values_that_would_break_the_script(field, value):
    with pytest.raises(ConfigError):
        build_slurm_job({**BASE_JOB, field: value})


@pytest.mark.parametrize("field, value", [("nodes", True), ("nodes", 2.0), ("gpus_per_node", True),
                                          ("rdzv_port", True), ("exclusive", 1), ("requeue", "yes"),
                                          ("hyperpod", 0)])
def test_booleans_are_not_numbers_and_numbers_are_not_booleans(field, value):
    with pytest.raises(ConfigError) as err:
        build_slurm_job({field: value})
    assert err.value.message.startswith(f"[slurm] {field}: must be a valid ")


def test_the_stubbed_run_notices_a_command_that_escapes(stub_bin, tmp_path):
    # The check itself: a script whose value escaped its quotes fails under the stubs.
    text = "#!/bin/bash\nset -euo pipefail\ntouch pwned\nsrun x\n"
    with pytest.raises(AssertionError):
        run_script(text, stub_bin, tmp_path)
    assert sbatch_header("#!/bin/bash\n#SBATCH --a=b  # note\n\necho\n") == [["--a=b"]]
    with pytest.raises(AssertionError, match="ignored by sbatch"):
        sbatch_header("#!/bin/bash\n#SBATCH --a\necho\n#SBATCH --b\n")

