"""Environment keys, the local wheel, [remote] settings, node selection and input rewriting."""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

import pytest

from llamapod.config.train_flags import parse_train_args
from llamapod.errors import ConfigError, RemoteError
from llamapod.workflows.connect import ClusterAccess, Node, RemoteSettings, load_remote_settings
from llamapod.workflows.environment import (EnvOptions, RemoteLayout, check_base_python, env_key, local_wheel,
                                         prepare_environment, source_hash)
from llamapod.workflows.cluster_train import _rewrite_inputs
from llamapod.remote.shell import LocalShell


def test_remote_env_key_changes_with_the_wheel_and_the_settings():
    base = env_key("a" * 64, EnvOptions())
    assert base == env_key("a" * 64, EnvOptions()) and len(base) == 16
    assert base != env_key("b" * 64, EnvOptions())
    assert base != env_key("a" * 64, EnvOptions(system_site_packages=True))
    assert base != env_key("a" * 64, EnvOptions(pip_args=("--extra-index-url", "https://example/cu126")))


def test_remote_source_hash_follows_content(tmp_path):
    (tmp_path / "src" / "llamapod").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text('name = "llamapod"\n')
    module = tmp_path / "src" / "llamapod" / "a.py"
    module.write_text("x = 1\n")
    first = source_hash(tmp_path)
    (tmp_path / "src" / "llamapod" / "__pycache__").mkdir()
    (tmp_path / "src" / "llamapod" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert source_hash(tmp_path) == first, "bytecode does not change the wheel"
    module.write_text("x = 2\n")
    assert source_hash(tmp_path) != first


def test_remote_prebuilt_wheel_must_be_a_llamapod_wheel(tmp_path):
    with pytest.raises(RemoteError, match=r"remote.wheel .*/other.whl is not a llamapod wheel file"):
        local_wheel(prebuilt=str(tmp_path / "other.whl"))
    wheel = tmp_path / "llamapod-9.9-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    assert local_wheel(prebuilt=str(wheel)) == wheel


def test_remote_base_python_must_be_new_enough(tmp_path):
    shell = LocalShell()
    assert check_base_python(shell, sys.executable) == "%d.%d.%d" % sys.version_info[:3]
    old = tmp_path / "python3.8"
    old.write_text("#!/bin/sh\necho 3.8.10\n")
    old.chmod(0o755)
    with pytest.raises(RemoteError) as err:
        check_base_python(shell, str(old))
    assert err.value.message == f"`{old}` on this machine is Python 3.8.10; llamapod needs 3.10 or newer"
    with pytest.raises(RemoteError, match=r"`/no/python` does not run on this machine"):
        check_base_python(shell, "/no/python")


def test_remote_missing_fsx_is_named(tmp_path):
    wheel = tmp_path / "llamapod-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    with pytest.raises(RemoteError) as err:
        prepare_environment(LocalShell(), RemoteLayout(str(tmp_path / "no-fsx")), wheel, EnvOptions())
    assert err.value.message == f"{tmp_path}/no-fsx does not exist on this machine"
    assert err.value.hint.startswith("check that the shared file system is mounted")


def test_remote_settings_reject_unknown_keys(tmp_path):
    config = tmp_path / "llamapod.toml"
    config.write_text('[remote]\nhots = "10.0.0.1"\n')
    with pytest.raises(ConfigError) as err:
        load_remote_settings(config)
    assert err.value.message.startswith(f"config file {config}: the [remote] table is not valid: remote.hots:")
    config.write_text('[remote]\nport = 0\n')
    with pytest.raises(ConfigError, match=r"remote.port: Input should be greater than or equal to 1"):
        load_remote_settings(config)


def _access(**settings) -> ClusterAccess:
    nodes = [Node("i-ctl", "controller-machine", "Running", "10.1.0.5"),
             Node("i-w1", "worker-group-1", "Pending", "10.1.0.6"),
             Node("i-w2", "worker-group-1", "Running", "10.1.0.7")]
    return ClusterAccess(name="demo", settings=RemoteSettings(**settings), user="ubuntu",
                         controller_group="controller-machine",
                         cluster_arn="arn:aws:sagemaker:us-east-1:1:cluster/k9x2abcdq7zt", region="us-east-1",
                         nodes=nodes)


def test_remote_node_selection_by_group_id_hostname_and_ip():
    access = _access()
    assert access.pick(None).instance_id == "i-ctl"
    assert access.pick("worker-group-1").instance_id == "i-w2", "a running node of the group"
    assert access.pick("i-w1").instance_id == "i-w1"
    assert access.pick("ip-10-1-0-6").instance_id == "i-w1"
    assert access.pick("10.1.0.7").instance_id == "i-w2"
    target = access.target_for(access.pick("i-w2"))
    assert target.host == "sagemaker-cluster:k9x2abcdq7zt_worker-group-1-i-w2"
    assert target.host_key_alias == "i-w2" and target.extra_path == ("/opt/slurm/bin",)
    assert target.proxy_command.endswith("--parameters portNumber=%p --region us-east-1")


def test_remote_missing_controller_group_says_which_exist():
    access = _access(controller_group="head")
    access.controller_group = "head"
    with pytest.raises(ConfigError) as err:
        access.pick(None)
    assert err.value.message == "cluster demo has no instance group 'head' to use as the head node"
    assert err.value.hint == "set remote.controller_group to one of: controller-machine, worker-group-1"


def test_remote_local_inputs_are_uploaded_and_rewritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("hello")
    (tmp_path / "tok.json").write_text("{}")
    spec = parse_train_args(["--dataset=data", "--tokenizer=tok.json", "--init_from=meta-llama/Llama-3.2-1B",
                             "--checkpoint_dir=ckpt", "--run_dir=runs/exp1"], None)
    run_dir = PurePosixPath("/fsx/llamapod/runs/exp1")
    rewritten, uploads = _rewrite_inputs(spec, run_dir)
    assert uploads == [(Path("data"), f"{run_dir}/inputs/dataset/data"),
                       (Path("tok.json"), f"{run_dir}/inputs/tokenizer/tok.json")]
    assert rewritten.dataset == f"{run_dir}/inputs/dataset/data"
    assert rewritten.tokenizer == f"{run_dir}/inputs/tokenizer/tok.json"
    assert rewritten.init_from == "meta-llama/Llama-3.2-1B", "not a local path: passed through"
    assert rewritten.checkpoint_dir == f"{run_dir}/ckpt" and rewritten.run_dir is None


def test_remote_job_hardware_comes_from_the_worker_group_unless_chosen():
    from llamapod.workflows.cluster_train import _hardware_from_cluster
    from llamapod.slurm.spec import SlurmJob

    access = _access()
    access.groups = [{"name": "controller-machine", "instance_type": "ml.c5.xlarge", "count": 1},
                     {"name": "worker-group-1", "instance_type": "ml.g5.48xlarge", "count": 4}]
    job = _hardware_from_cluster(access, SlurmJob(), explicit=set())
    assert (job.instance_type, job.nodes, job.workers_per_node) == ("ml.g5.48xlarge", 4, 8)
    chosen = _hardware_from_cluster(access, SlurmJob(nodes=2), explicit={"nodes"})
    assert (chosen.instance_type, chosen.nodes) == ("ml.g5.48xlarge", 2)
    cpu = _hardware_from_cluster(access, SlurmJob(gpus_per_node=1, nodes=1), explicit={"gpus_per_node", "nodes"})
    assert (cpu.instance_type, cpu.nodes) == (None, 1)
    assert _hardware_from_cluster(_access(), SlurmJob(), explicit=set()) == SlurmJob(), "no groups known: unchanged"


def test_remote_inputs_are_sent_once_until_they_change(tmp_path):
    import os

    from llamapod.remote.transfer import sync_path

    shell = LocalShell()
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.txt").write_text("one")
    remote = str(tmp_path / "fsx" / "inputs" / "data")
    assert sync_path(shell, data, remote) is True
    assert sync_path(shell, data, remote) is False
    (data / "b.txt").write_text("two")
    assert sync_path(shell, data, remote) is True
    assert sorted(os.listdir(remote)) == ["b.txt", "sub"]
    (data / "b.txt").unlink()
    assert sync_path(shell, data, remote) is True
    assert sorted(os.listdir(remote)) == ["sub"], "a removed file does not linger on the cluster"
    # An upload that never finished (no fingerprint beside it) is redone.
    Path(remote + ".llamapod-manifest").unlink()
    assert sync_path(shell, data, remote) is True


def test_remote_one_builder_per_environment(tmp_path):
    import socket
    import subprocess

    from llamapod.workflows.environment import READY_MARKER, acquire_build_lock, build_lock

    shell = LocalShell()
    env_dir = PurePosixPath(tmp_path / "envs" / "abc")
    assert acquire_build_lock(shell, env_dir) is True
    assert (Path(build_lock(env_dir)) / "owner").read_text().split()[0] == socket.gethostname()

    # Held by a live process that finishes the environment: the waiter reuses it.
    Path(env_dir).mkdir(parents=True)
    (Path(env_dir) / READY_MARKER).write_text("{}")
    assert acquire_build_lock(shell, env_dir) is False

    # Left behind by an interrupted run of this machine (its process is gone): taken over.
    (Path(env_dir) / READY_MARKER).unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (Path(build_lock(env_dir)) / "owner").write_text(f"{socket.gethostname()} {dead.pid}\n")
    assert acquire_build_lock(shell, env_dir) is True

    # Held by someone else for longer than the deadline: one line, the way out.
    (Path(build_lock(env_dir)) / "owner").write_text("another-laptop 12345\n")
    with pytest.raises(RemoteError) as err:
        acquire_build_lock(shell, env_dir, deadline_s=0)
    assert err.value.message == f"another llamapod has been preparing {env_dir} for over 0 minutes"
    assert err.value.hint == f"if nothing is preparing it any more, remove {env_dir}.building on the cluster and re-run"


def test_remote_env_on_a_virtual_environment_sees_its_packages(tmp_path):
    """remote.base_python may itself be a virtual environment (torch installed in ~/myenv, or
    the tests run from one): "system site packages" must then mean its packages, not only
    those of the interpreter below it."""
    import subprocess

    from llamapod.workflows.environment import BASE_VENV_PTH, _create_venv

    base = tmp_path / "base"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base)], check=True)
    base_python = base / "bin" / "python"
    base_site = subprocess.run([str(base_python), "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    (Path(base_site) / "only_in_the_base_venv.py").write_text("ANSWER = 42\n")

    env_dir = PurePosixPath(tmp_path / "fsx" / "envs" / "k")
    _create_venv(LocalShell(), env_dir, EnvOptions(base_python=str(base_python), system_site_packages=True))
    probe = subprocess.run([str(Path(env_dir) / "bin" / "python"), "-c",
                            "import only_in_the_base_venv, sys; print(only_in_the_base_venv.ANSWER, sys.prefix)"],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["42", str(env_dir)]
    assert len(list(Path(env_dir).rglob(BASE_VENV_PTH))) == 1

