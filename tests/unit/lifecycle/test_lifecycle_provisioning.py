"""The provisioning_parameters.json contract: what `plan`/`up` write is exactly what the nodes read,
and no value that could break a root-owned file (fstab, passwd, slurm.conf, slurmdbd.conf) or be
read as a command's option gets through, on either side."""

from __future__ import annotations

import json
import sys

import pytest

from llamapod.cloud import plan
from llamapod.config.cluster import spec_from_table
from llamapod.lifecycle import LIFECYCLE_DIR, provisioning

sys.path.insert(0, str(LIFECYCLE_DIR))

import node_cluster  # noqa: E402
from node_system import StepError  # noqa: E402

DNS = "fs-0123456789abcdef0.fsx.us-east-1.amazonaws.com"
FULL = {
    "login": {"name": "login", "instance_type": "ml.m5.4xlarge"},
    "workers": [{"name": "g5", "instance_type": "ml.g5.48xlarge", "count": 2, "partition": "gpu"},
                {"name": "cpu", "instance_type": "ml.c5.xlarge", "count": 1}],
    "cluster_user": "alice",
    "shared_users": [{"name": "bob", "uid": 2001}, {"name": "carol", "uid": 2002}],
    "containers": True,
    "accounting": {"storage_host": "db.cluster-abc.us-east-1.rds.amazonaws.com", "storage_user": "slurm",
                   "storage_pass": "Zq3!x_9$", "storage_port": 3307},
}


def test_what_up_uploads_is_what_the_node_reads(tmp_path):
    spec = spec_from_table(FULL)
    text = plan.provisioning_file(spec, DNS, "abcdefgh")
    read = provisioning.loads(text)
    assert read == plan.provisioning_parameters(spec, DNS, "abcdefgh")
    assert read.cluster_user == "alice" and [u.name for u in read.shared_users] == ["bob", "carol"]
    assert read.accounting == provisioning.Accounting("db.cluster-abc.us-east-1.rds.amazonaws.com", "slurm",
                                                      "Zq3!x_9$", 3307, "slurm_acct_db")
    # The node's own reader (the module imported as a top-level script, as on a node) agrees.
    path = tmp_path / provisioning.FILE_NAME
    path.write_text(text)
    assert node_cluster.load_parameters(path).to_dict() == read.to_dict()
    assert "Zq3" not in repr(read)


def test_plan_preview_marks_the_fsx_names_and_checks_everything_else():
    preview = plan.provisioning_preview(spec_from_table(FULL))
    assert preview["fsx_dns_name"] == plan.PLACEHOLDER_FSX_DNS
    assert preview["cluster_user"] == "alice"
    with pytest.raises(provisioning.ProvisioningError):  # a placeholder never reaches a node
        provisioning.loads(json.dumps(preview))


VALID = provisioning.ProvisioningParameters(
    controller_group="controller-machine", login_group="login",
    worker_groups=(provisioning.WorkerGroup("worker-group-1", "dev"),), fsx_dns_name=DNS, fsx_mountname="abcdefgh",
    shared_users=(provisioning.SharedUser("bob", 2001),),
    accounting=provisioning.Accounting("db.internal", "slurm", "pw"))

# Values that would do harm where they land: a second fstab line, an option to useradd or
# mount, a slurm.conf comment that cuts the rest of a line, a line break into slurmdbd.conf.
HOSTILE = ["x\ny", "x\ty", "x y", "-x", "x#y", "x\x00y", "x\x1by", "", "x\\y", 'x"y']
FIELDS = {
    "controller_group": lambda v: {"controller_group": v},
    "login_group": lambda v: {"login_group": v},
    "worker group": lambda v: {"worker_groups": (provisioning.WorkerGroup(v, "dev"),)},
    "partition": lambda v: {"worker_groups": (provisioning.WorkerGroup("worker-group-1", v),)},
    "fsx_dns_name": lambda v: {"fsx_dns_name": v},
    "fsx_mountname": lambda v: {"fsx_mountname": v},
    "cluster_user": lambda v: {"cluster_user": v},
    "shared user": lambda v: {"shared_users": (provisioning.SharedUser(v, 2001),)},
    "storage_host": lambda v: {"accounting": provisioning.Accounting(v, "slurm", "pw")},
    "storage_user": lambda v: {"accounting": provisioning.Accounting("db", v, "pw")},
    "storage_pass": lambda v: {"accounting": provisioning.Accounting("db", "slurm", v)},
    "storage_loc": lambda v: {"accounting": provisioning.Accounting("db", "slurm", "pw", storage_loc=v)},
}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_every_value_is_matched_in_full_before_use(field, value):
    import dataclasses

    params = dataclasses.replace(VALID, **FIELDS[field](value))
    assert provisioning.problems(params), f"{field}={value!r} was accepted"
    with pytest.raises(provisioning.ProvisioningError):
        provisioning.dumps(params)  # `up` never uploads it
    with pytest.raises(provisioning.ProvisioningError):
        provisioning.loads(json.dumps(params.to_dict()))  # a node never uses it


def test_valid_values_pass_and_the_password_is_never_shown():
    assert provisioning.problems(VALID) == []
    leaked = provisioning.problems(provisioning.ProvisioningParameters(
        **{**VALID.__dict__, "accounting": provisioning.Accounting("db", "slurm", "secret words")}))
    assert leaked == ["accounting.storage_pass must be a password of 1-128 printable ASCII characters without "
                      "spaces, quotes, backslash, ` or #, not starting with -, found (hidden)"]


@pytest.mark.parametrize(("change", "message"), [
    ({"version": "2.0.0"}, "version must be '1.0.0', found '2.0.0'"),
    ({"workload_manager": "kubernetes"}, "workload_manager must be 'slurm', found 'kubernetes'"),
    ({"worker_groups": []}, "worker_groups must list at least one worker group"),
    ({"shared_users": [{"name": "bob", "uid": 99}]}, "shared_users[0].uid must be a whole number from 1000 to "
                                                     "60000, found 99"),
    ({"shared_users": [{"name": "ubuntu", "uid": 2001}]},
     "shared_users[0].name 'ubuntu' is already the cluster user or another shared user"),
    ({"worker_groups": [{"instance_group_name": "controller-machine", "partition_name": "dev"}]},
     "instance group 'controller-machine' is named more than once (controller, login and worker groups must "
     "differ)"),
    ({"accounting": {"storage_host": "db", "storage_user": "s", "storage_pass": "p", "storage_ip": "x"}},
     "accounting has unknown keys storage_ip (known: storage_host, storage_port, storage_user, storage_pass, "
     "storage_loc)"),
    ({"containers": 1}, "containers must be true or false, found 1"),
])
def test_reading_names_the_key_and_the_rule(change, message):
    data = {**VALID.to_dict(), **change}
    with pytest.raises(provisioning.ProvisioningError) as info:
        provisioning.from_dict(data)
    assert info.value.problems == [message]


def test_unknown_keys_are_ignored_with_a_warning_and_bad_ones_stop_the_node(tmp_path, caplog):
    path = tmp_path / provisioning.FILE_NAME
    path.write_text(json.dumps({**VALID.to_dict(), "slurm_configurations": {}}))
    with caplog.at_level("WARNING", logger="llamapod.lifecycle"):
        assert node_cluster.load_parameters(path).to_dict() == VALID.to_dict()
    assert "ignoring keys llamapod does not know: slurm_configurations" in caplog.text
    path.write_text(json.dumps({**VALID.to_dict(), "cluster_user": "root\nevil"}))
    with pytest.raises(StepError, match=r"cluster_user must be a Linux user name .*, found 'root\\nevil'$"):
        node_cluster.load_parameters(path)
