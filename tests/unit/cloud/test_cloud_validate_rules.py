"""Every rule of the [cluster] table, with the exact text a user sees, and all problems at once."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamapod.config.cluster import (AccountingSpec, ClusterSpec, ControllerGroupSpec, FsxSpec, InstanceGroupSpec,
                                     NetworkSpec, SharedUserSpec, WorkerGroupSpec, apply_overrides,
                                     hyperpod_instance_types, spec_from_table, validate_cluster_table)
from llamapod.errors import ConfigError

SEED = {
    "name": "ml-4-g5-48x-cluster",
    "region": "us-east-1",
    "controller": {"name": "controller-machine", "instance_type": "ml.c5.xlarge", "count": 1},
    "workers": [{"name": "worker-group-1", "instance_type": "ml.g5.48xlarge", "count": 4}],
    "threads_per_core": 1,
    "fsx": {"capacity_gib": 1200, "deployment_type": "PERSISTENT_2", "throughput_per_tib": 250},
}


def with_changes(**changes) -> dict:
    table = copy.deepcopy(SEED)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = table
        for part in parents:
            target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
        target[key] = value
    return table


def test_the_seed_is_valid():
    assert validate_cluster_table(SEED) == []
    spec = spec_from_table(SEED)
    assert spec.workers[0].partition == "ml.g5.48xlarge"


RULES = [
    ({"name": "bad_name"},
     "cluster.name must be 1-63 letters, digits or hyphens, starting and ending with a letter or digit "
     "(got 'bad_name')"),
    ({"name": "x" * 64},
     "cluster.name must be 1-63 letters, digits or hyphens, starting and ending with a letter or digit "
     f"(got '{'x' * 39}..., 64 characters)"),
    ({"name": "-lead"},
     "cluster.name must be 1-63 letters, digits or hyphens, starting and ending with a letter or digit "
     "(got '-lead')"),
    ({"region": "useast1"}, "cluster.region must be an AWS region code such as us-east-1 (got 'useast1')"),
    ({"region": "us-east-9"},
     "cluster.region must be a region where SageMaker is available, e.g. us-east-1 "
     "(got 'us-east-9'; did you mean us-east-2?)"),
    ({"availability_zone": "east-1a"},
     "cluster.availability_zone must be an AZ name such as us-east-1a or an AZ ID such as use1-az4 "
     "(got 'east-1a')"),
    ({"availability_zone": "us-west-2a"}, "cluster.availability_zone must be in cluster.region us-east-1 "
                                          "(got 'us-west-2a')"),
    ({"workers__0__instance_type": "ml.g5.48xlarg"},
     "cluster.workers[0].instance_type must be an instance type HyperPod offers, e.g. ml.g5.48xlarge "
     "(got 'ml.g5.48xlarg'; did you mean ml.g5.48xlarge?)"),
    ({"workers__0__instance_type": "ml.zz9.huge"},
     "cluster.workers[0].instance_type must be an instance type HyperPod offers, e.g. ml.g5.48xlarge "
     "(got 'ml.zz9.huge')"),
    ({"workers__0__instance_type": "g5.48xlarge"},
     "cluster.workers[0].instance_type must be an instance type HyperPod offers, e.g. ml.g5.48xlarge "
     "(got 'g5.48xlarge'; did you mean ml.g5.48xlarge?)"),
    ({"controller__instance_type": "ml.c5.xlarg"},
     "cluster.controller.instance_type must be an instance type HyperPod offers, e.g. ml.g5.48xlarge "
     "(got 'ml.c5.xlarg'; did you mean ml.c5.xlarge?)"),
    ({"workers__0__count": 0}, "cluster.workers[0].count must be a whole number from 1 to 6758 (got 0)"),
    ({"workers__0__count": "4"}, "cluster.workers[0].count must be a whole number from 1 to 6758 (got '4')"),
    ({"controller__count": 2}, "cluster.controller.count must be 1: Slurm runs one controller node (got 2)"),
    ({"workers__0__name": "controller-machine"},
     "instance group names must be unique across controller, login and workers (got 'controller-machine' twice)"),
    ({"workers__0__partition": "gpu queue"},
     "cluster.workers[0].partition must be 1-64 letters, digits, dots, hyphens or underscores, starting with "
     "a letter or digit (got 'gpu queue')"),
    ({"workers": []}, "cluster.workers must be a non-empty list of worker groups ([[cluster.workers]]) (got [])"),
    ({"threads_per_core": 3}, "cluster.threads_per_core must be 1 or 2 (1 turns hyperthreading off) (got 3)"),
    ({"ebs_volume_gb": 0}, "cluster.ebs_volume_gb must be a whole number of GB from 1 to 16384 (got 0)"),
    ({"deep_health_checks": ["InstanceStres"]},
     "cluster.deep_health_checks must be a list of distinct values from InstanceStress, InstanceConnectivity "
     "(got ['InstanceStres'])"),
    ({"node_recovery": "auto"}, "cluster.node_recovery must be Automatic or None (got 'auto')"),
    ({"fsx__capacity_gib": 1300},
     "cluster.fsx.capacity_gib must be 1200 or a multiple of 2400 for PERSISTENT_2 (got 1300)"),
    ({"fsx__capacity_gib": 3600},
     "cluster.fsx.capacity_gib must be 1200 or a multiple of 2400 for PERSISTENT_2 (got 3600)"),
    ({"fsx__deployment_type": "SCRATCH_1", "fsx__capacity_gib": 4800, "fsx__throughput_per_tib": None},
     "cluster.fsx.capacity_gib must be 1200, 2400 or a multiple of 3600 for SCRATCH_1 (got 4800)"),
    ({"fsx__throughput_per_tib": 200},
     "cluster.fsx.throughput_per_tib must be one of 125, 250, 500, 1000 for PERSISTENT_2 (got 200)"),
    ({"fsx__deployment_type": "PERSISTENT_1"},
     "cluster.fsx.throughput_per_tib must be one of 50, 100, 200 for PERSISTENT_1 (got 250)"),
    ({"fsx__deployment_type": "SCRATCH_2"},
     "cluster.fsx.throughput_per_tib must not be set for SCRATCH_2 (only PERSISTENT file systems take it) "
     "(got 250)"),
    ({"fsx__deployment_type": "PERSISTENT_3"},
     "cluster.fsx.deployment_type must be one of PERSISTENT_2, PERSISTENT_1, SCRATCH_2, SCRATCH_1 "
     "(got 'PERSISTENT_3')"),
    ({"fsx__compression": "gzip"}, "cluster.fsx.compression must be LZ4 or NONE (got 'gzip')"),
    ({"network": {"vpc_cidr": "10.1.0.0/8"}},
     "cluster.network.vpc_cidr must be an IPv4 CIDR block from /16 to /28 with no host bits set, e.g. "
     "10.1.0.0/16 (got '10.1.0.0/8')"),
    ({"network": {"private_subnet_cidr": "10.2.0.0/17"}},
     "cluster.network.private_subnet_cidr must lie inside cluster.network.vpc_cidr 10.1.0.0/16 (got '10.2.0.0/17')"),
    ({"network": {"public_subnet_cidr": "10.1.128.0/24"}},
     "cluster.network.public_subnet_cidr and private_subnet_cidr must not overlap "
     "(got '10.1.128.0/24' and '10.1.128.0/17')"),
    ({"tags": {"aws:owner": "me"}},
     "cluster.tags keys must be 1-128 letters, digits, spaces and _ . : / = + - @ and not start with aws: or "
     "llamapod: (got 'aws:owner')"),
    ({"tags": {"team": "ml;rm -rf"}},
     "cluster.tags.team must be 1-256 letters, digits, spaces and _ . : / = + - @ (got 'ml;rm -rf')"),
    ({"tags": {"cost#center": "ml"}},
     "cluster.tags keys must be 1-128 letters, digits, spaces and _ . : / = + - @ and not start with aws: or "
     "llamapod: (got 'cost#center')"),
    ({"tags": {"team": ""}},
     "cluster.tags.team must be 1-256 letters, digits, spaces and _ . : / = + - @ (got '')"),
    # AWS takes 50 tags on a resource (the SageMaker/FSx/IAM/CloudFormation models' TagList max 50);
    # llamapod adds llamapod:cluster and, on the file system and network resources, Name.
    ({"tags": {f"k{i}": "v" for i in range(49)}},
     "cluster.tags must be at most 48 tags (AWS takes 50 on a resource and llamapod adds 2) "
     "(got {'k0': 'v', 'k1': 'v', 'k2': 'v', 'k3': ...)"),
    # IAM compares tag keys ignoring case (CreateRole: "Duplicate tag keys found").
    ({"tags": {"Team": "a", "team": "b"}},
     "cluster.tags keys must differ in more than letter case: IAM treats 'Team' and 'team' as one key"),
    ({"cluster_user": "Root User"},
     "cluster.cluster_user must be a Linux user name (up to 32 lowercase letters, digits, _ or -, not starting "
     "with a digit or -) (got 'Root User')"),
    ({"cluster_user": "-oProxyCommand"},
     "cluster.cluster_user must be a Linux user name (up to 32 lowercase letters, digits, _ or -, not starting "
     "with a digit or -) (got '-oProxyCommand')"),
    ({"shared_users": [{"name": "bob", "uid": 999}]},
     "cluster.shared_users[0].uid must be a whole number from 1000 to 60000 (got 999)"),
    ({"shared_users": [{"name": "bob\nroot", "uid": 2001}]},
     "cluster.shared_users[0].name must be a Linux user name (up to 32 lowercase letters, digits, _ or -, not "
     "starting with a digit or -) (got 'bob\\nroot')"),
    ({"shared_users": [{"name": "ubuntu", "uid": 2001}]},
     "cluster.shared_users[0].name must differ from cluster.cluster_user and the other shared users "
     "(got 'ubuntu')"),
    ({"shared_users": [{"name": "bob", "uid": 2001}, {"name": "eve", "uid": 2001}]},
     "cluster.shared_users[1].uid must differ from the other shared users' uids (got 2001)"),
    ({"shared_users": [{"name": "bob", "uid": 2001, "shell": "/bin/sh"}]},
     "cluster.shared_users[0].shell is not a setting llamapod knows (known: name, uid)"),
    ({"containers": "yes"}, "cluster.containers must be true or false (got 'yes')"),
    ({"accounting": {"storage_host": "db.internal", "storage_user": "slurm"}},
     "cluster.accounting.storage_pass must be set"),
    ({"accounting": {"storage_host": "db.internal\nStorageHost=evil", "storage_user": "slurm",
                     "storage_pass": "pw"}},
     "cluster.accounting.storage_host must be a DNS host name (lowercase letters, digits, hyphens and dots) or an "
     "IPv4 address (got 'db.internal\\nStorageHost=evil')"),
    ({"accounting": {"storage_host": "db.internal", "storage_user": "slurm", "storage_pass": "pw#comment"}},
     "cluster.accounting.storage_pass must be a password of 1-128 printable ASCII characters without spaces, "
     "quotes, backslash, ` or #, not starting with - (got a value that breaks it)"),
    ({"accounting": {"storage_host": "db.internal", "storage_user": "slurm", "storage_pass": "pw",
                     "storage_port": 0}},
     "cluster.accounting.storage_port must be a TCP port number (1-65535) (got 0)"),
    ({"deep_health_checks": ["InstanceConnectivity"], "workers": [
        {"name": "w", "instance_type": "ml.g5.48xlarge", "count": 1},
        {"name": "c", "instance_type": "ml.c5.xlarge", "count": 8}]},
     "cluster.deep_health_checks: InstanceConnectivity needs a GPU or Trainium group of at least 2 instances, "
     "and no group has that; remove it or raise a group's count"),
    ({"workers__0__instance_tpye": "ml.g5.48xlarge"},
     "cluster.workers[0].instance_tpye is not a setting llamapod knows (known: name, instance_type, count, "
     "partition); did you mean instance_type?"),
    ({"fsx__capacity": 1200},
     "cluster.fsx.capacity is not a setting llamapod knows (known: capacity_gib, deployment_type, "
     "throughput_per_tib, compression); did you mean capacity_gib?"),
    ({"controller": "ml.c5.xlarge"}, "cluster.controller must be a table ([cluster.controller]) (got 'ml.c5.xlarge')"),
]


@pytest.mark.parametrize("changes,message", RULES, ids=[m.split(" ")[0] + f"-{i}" for i, (_, m) in enumerate(RULES)])
def test_each_rule_has_its_exact_message(changes, message):
    table = with_changes(**changes) if not any(k in ("network", "tags", "workers", "controller", "shared_users",
                                                     "accounting") for k in changes) else {**copy.deepcopy(SEED),
                                                                                           **changes}
    assert validate_cluster_table(table) == [message]


def test_users_containers_and_accounting_reach_the_spec():
    spec = spec_from_table({**SEED, "cluster_user": "alice", "shared_users": [{"name": "bob", "uid": 2001}],
                            "containers": True,
                            "accounting": {"storage_host": "10.1.0.9", "storage_user": "slurm", "storage_pass": "s3cr3t!"}})
    assert (spec.cluster_user, [(u.name, u.uid) for u in spec.shared_users], spec.containers) == (
        "alice", [("bob", 2001)], True)
    assert spec.accounting.storage_port == 3306 and spec.accounting.storage_loc == "slurm_acct_db"
    assert "s3cr3t" not in repr(spec)  # the password never shows up in a log or traceback
    tags = spec_from_table({**SEED, "tags": {"Équipe ML": "données/été 2026", "cost-center": "a+b=c@d:e_f.g"}})
    assert tags.tags == {"Équipe ML": "données/été 2026", "cost-center": "a+b=c@d:e_f.g"}


def test_az_may_be_a_name_or_an_id():
    assert validate_cluster_table({**SEED, "availability_zone": "use1-az4"}) == []
    assert validate_cluster_table({**SEED, "availability_zone": "us-east-1d"}) == []
    assert spec_from_table({**SEED, "availability_zone": "use1-az4"}).availability_zone_kind == "id"
    assert spec_from_table({**SEED, "availability_zone": "us-east-1d"}).availability_zone_kind == "name"


def test_every_problem_is_reported_at_once():
    table = with_changes(name="bad_name", workers__0__count=0, threads_per_core=3, fsx__capacity_gib=100)
    with pytest.raises(ConfigError) as info:
        spec_from_table(table)
    assert info.value.message == "the [cluster] settings have 4 problems"
    assert info.value.hint == "fix them in llamapod.toml (or the flags), then re-run"
    assert [p.split(" ")[0] for p in info.value.problems] == [
        "cluster.name", "cluster.workers[0].count", "cluster.threads_per_core", "cluster.fsx.capacity_gib"]


def test_one_problem_is_named_in_the_message():
    with pytest.raises(ConfigError) as info:
        spec_from_table(with_changes(threads_per_core=0))
    assert info.value.message == ("the [cluster] settings have 1 problem: cluster.threads_per_core must be 1 or 2 "
                                  "(1 turns hyperthreading off) (got 0)")


def test_instance_types_come_from_botocore():
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    assert hyperpod_instance_types() == tuple(model.shape_for("ClusterInstanceType").enum)
    assert "ml.g5.48xlarge" in hyperpod_instance_types()


# ---- property: random configs give a spec or a ConfigError, never a traceback ---------

# Wrong-typed values of every TOML kind (and None, which only flags can give).
_values = st.sampled_from([None, True, 0, -1, 2.5, float("nan"), "", "x", [], [1], {}, {"k": "v"}, ["a", "a"]])
_types = st.sampled_from(["ml.g5.48xlarge", "ml.c5.xlarge", "ml.p5.48xlarge", "g5.48xlarge", "", "ml.x"])
_group = st.fixed_dictionaries({}, optional={"name": st.one_of(st.sampled_from(["a", "b", "w-1", "bad_"]), _values),
                                             "instance_type": st.one_of(_types, _values),
                                             "count": st.one_of(st.integers(-1, 7000), _values),
                                             "partition": st.one_of(st.sampled_from(["p", "a b"]), _values)})
_cluster = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(["c", "my-cluster", "bad_name", ""]), _values),
    "region": st.one_of(st.sampled_from(["us-east-1", "us-west-2", "eu-west-9", "mars"]), _values),
    "availability_zone": st.one_of(st.sampled_from(["use1-az4", "us-east-1a", "us-west-2b", "az"]), _values),
    "controller": st.one_of(_group, _values),
    "login": st.one_of(_group, _values),
    "workers": st.one_of(st.lists(_group, max_size=3), _values),
    "threads_per_core": st.one_of(st.integers(0, 3), _values),
    "ebs_volume_gb": st.one_of(st.integers(-1, 20000), _values),
    "deep_health_checks": st.one_of(st.lists(st.sampled_from(["InstanceStress", "InstanceConnectivity", "x"]),
                                             max_size=3), _values),
    "node_recovery": st.one_of(st.sampled_from(["Automatic", "None", "no"]), _values),
    "fsx": st.one_of(st.fixed_dictionaries({}, optional={
        "capacity_gib": st.one_of(st.sampled_from([1200, 2400, 3600, 4800, 0]), _values),
        "deployment_type": st.one_of(st.sampled_from(["PERSISTENT_2", "PERSISTENT_1", "SCRATCH_1", "SCRATCH_2"]),
                                     _values),
        "throughput_per_tib": st.one_of(st.sampled_from([50, 125, 250, 1000]), _values),
        "compression": st.one_of(st.sampled_from(["LZ4", "NONE"]), _values)}), _values),
    "network": st.one_of(st.fixed_dictionaries({}, optional={
        "vpc_cidr": st.one_of(st.sampled_from(["10.0.0.0/16", "10.1.0.0/16", "300.0.0.0/16"]), _values),
        "private_subnet_cidr": st.one_of(st.sampled_from(["10.1.128.0/17", "10.0.0.0/24"]), _values)}), _values),
    "tags": st.one_of(st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), _values), max_size=2),
                      _values),
    "cluster_user": st.one_of(st.sampled_from(["ubuntu", "Bad"]), _values),
    "shared_users": st.one_of(st.lists(st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.sampled_from(["bob", "ubuntu", "-x"]), _values),
        "uid": st.one_of(st.sampled_from([2001, 2002, 5]), _values)}), max_size=2), _values),
    "containers": _values,
    "accounting": st.one_of(st.fixed_dictionaries({}, optional={
        "storage_host": st.one_of(st.sampled_from(["db", "10.0.0.1", "a b"]), _values),
        "storage_user": st.one_of(st.sampled_from(["slurm", "-u"]), _values),
        "storage_pass": st.one_of(st.sampled_from(["pw", "p w", "#"]), _values),
        "storage_port": st.one_of(st.sampled_from([3306, 0, 70000]), _values)}), _values),
    "unexpected": _values,
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.one_of(_cluster, _values))
def test_random_tables_give_a_spec_or_a_config_error(table):
    try:
        spec = spec_from_table(table)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(spec, ClusterSpec)
        assert validate_cluster_table(table) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.one_of(_cluster, _values))
def test_every_problem_reads_as_a_rule_on_one_line(table):
    for line in validate_cluster_table(table):
        rule = " must " in line or " is not a setting llamapod knows " in line
        assert line.startswith(("cluster", "instance group names")) and rule and "\n" not in line, line
        assert not any(words in line for words in ("Input should", "Field required", "Value error", "validation"))


# ---- one schema: keys, defaults and rules come from the models -------------------------

TABLES = {"cluster": (ClusterSpec, lambda t: t), "cluster.controller": (ControllerGroupSpec, lambda t: t["controller"]),
          "cluster.workers[0]": (WorkerGroupSpec, lambda t: t["workers"][0]),
          "cluster.login": (InstanceGroupSpec, lambda t: t.setdefault("login", {"name": "login",
                                                                                 "instance_type": "ml.m5.4xlarge"})),
          "cluster.fsx": (FsxSpec, lambda t: t["fsx"]), "cluster.network": (NetworkSpec, lambda t: t.setdefault("network", {})),
          "cluster.shared_users[0]": (SharedUserSpec, lambda t: t.setdefault("shared_users", [{"name": "bob",
                                                                                              "uid": 2001}])[0]),
          "cluster.accounting": (AccountingSpec, lambda t: t.setdefault("accounting", {
              "storage_host": "db", "storage_user": "slurm", "storage_pass": "pw"}))}


@pytest.mark.parametrize("where", sorted(TABLES))
def test_unknown_keys_are_told_the_models_own_keys(where):
    model, table_at = TABLES[where]
    table = copy.deepcopy(SEED)
    table_at(table)["colour"] = "blue"
    assert validate_cluster_table(table) == [
        f"{where}.colour is not a setting llamapod knows (known: {', '.join(model.model_fields)})"]


def test_the_defaults_are_the_models():
    assert spec_from_table({}) == ClusterSpec()
    assert spec_from_table({}).workers[0].partition == spec_from_table({}).workers[0].instance_type
    # A flag on the seed's worker group keeps the partition following the instance type.
    assert apply_overrides({}, {"worker_type": "ml.p5.48xlarge"})["workers"] == [
        {"name": "worker-group-1", "instance_type": "ml.p5.48xlarge", "count": 4}]


def test_rules_joining_settings_are_reported_with_every_other_problem():
    table = {**copy.deepcopy(SEED), "name": "bad_name", "availability_zone": "us-west-2a",
             "login": {"name": "controller-machine", "instance_type": "ml.c5.xlarge"},
             "network": {"private_subnet_cidr": "10.2.0.0/17"},
             "shared_users": [{"name": "ubuntu", "uid": 2001}], "fsx": {"capacity_gib": 1300}, "tags": {"aws:x": "y"}}
    assert validate_cluster_table(table) == [
        "cluster.name must be 1-63 letters, digits or hyphens, starting and ending with a letter or digit "
        "(got 'bad_name')",
        "cluster.availability_zone must be in cluster.region us-east-1 (got 'us-west-2a')",
        "instance group names must be unique across controller, login and workers (got 'controller-machine' twice)",
        "cluster.fsx.capacity_gib must be 1200 or a multiple of 2400 for PERSISTENT_2 (got 1300)",
        "cluster.network.private_subnet_cidr must lie inside cluster.network.vpc_cidr 10.1.0.0/16 (got '10.2.0.0/17')",
        "cluster.tags keys must be 1-128 letters, digits, spaces and _ . : / = + - @ and not start with aws: or "
        "llamapod: (got 'aws:x')",
        "cluster.shared_users[0].name must differ from cluster.cluster_user and the other shared users (got 'ubuntu')"]

    # A rule over other settings waits for those to be valid: the groups' rule broke, so whether
    # a group can run InstanceConnectivity is told once the names are fixed.
    table["deep_health_checks"] = ["InstanceConnectivity"]
    table["workers"][0]["count"] = 1
    assert not any(p.startswith("cluster.deep_health_checks") for p in validate_cluster_table(table))
    table["login"]["name"] = "login"
    assert validate_cluster_table(table)[2].startswith("cluster.deep_health_checks: InstanceConnectivity needs")


def test_a_type_error_reads_as_the_settings_rule():
    assert validate_cluster_table({**SEED, "threads_per_core": True, "containers": "yes", "ebs_volume_gb": "500",
                                   "fsx": {"throughput_per_tib": "fast"}}) == [
        "cluster.threads_per_core must be 1 or 2 (1 turns hyperthreading off) (got True)",
        "cluster.ebs_volume_gb must be a whole number of GB from 1 to 16384 (got '500')",
        "cluster.fsx.throughput_per_tib must be one of 125, 250, 500, 1000 for PERSISTENT_2 (got 'fast')",
        "cluster.containers must be true or false (got 'yes')"]


@pytest.mark.parametrize("password", [12345, "p w", ["secret"]])
def test_a_password_is_never_shown(password):
    table = {**SEED, "accounting": {"storage_host": "db", "storage_user": "slurm", "storage_pass": password}}
    problems = validate_cluster_table(table)
    assert problems == ["cluster.accounting.storage_pass must be a password of 1-128 printable ASCII characters "
                        "without spaces, quotes, backslash, ` or #, not starting with - (got a value that breaks it)"]
    assert str(password) not in problems[0] and repr(password) not in problems[0]
