"""ClusterSpec: the seed by default, loaded from llamapod.toml, with flags on top."""

from __future__ import annotations

import pytest

from llamapod.config.cluster import load_cluster_spec
from llamapod.errors import ConfigError


def test_defaults_reproduce_the_seed(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    spec = load_cluster_spec(None, {})
    assert (spec.name, spec.region, spec.threads_per_core) == ("ml-4-g5-48x-cluster", "us-east-1", 1)
    assert [(g.name, g.instance_type, g.count) for g in spec.instance_groups] == [
        ("controller-machine", "ml.c5.xlarge", 1), ("worker-group-1", "ml.g5.48xlarge", 4)]
    assert (spec.fsx.capacity_gib, spec.fsx.deployment_type) == (1200, "PERSISTENT_2")
    assert spec.instance_counts() == {"ml.c5.xlarge": 1, "ml.g5.48xlarge": 4}
    assert spec.total_instances == 5
    assert spec.cluster_user == "ubuntu" and spec.login is None and spec.availability_zone is None


def test_file_with_several_groups(tmp_path):
    path = tmp_path / "llamapod.toml"
    path.write_text("""
[cluster]
name = "two-pools"
availability_zone = "use1-az4"
ebs_volume_gb = 500
deep_health_checks = ["InstanceStress"]

[cluster.login]
name = "login"
instance_type = "ml.m5.4xlarge"

[[cluster.workers]]
name = "g5"
instance_type = "ml.g5.48xlarge"
count = 2

[[cluster.workers]]
name = "g5-small"
instance_type = "ml.g5.12xlarge"
count = 3
partition = "small"

[cluster.tags]
team = "research"
""")
    spec = load_cluster_spec(path, {})
    assert [g.name for g in spec.instance_groups] == ["controller-machine", "login", "g5", "g5-small"]
    assert [w.partition for w in spec.workers] == ["ml.g5.48xlarge", "small"]
    assert spec.instance_types == ["ml.c5.xlarge", "ml.g5.12xlarge", "ml.g5.48xlarge", "ml.m5.4xlarge"]
    assert spec.tags == {"team": "research"}
    assert spec.availability_zone_kind == "id"
    assert spec.total_instances == 1 + 1 + 2 + 3


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "llamapod.toml"
    path.write_text('[cluster]\nname = "from-file"\n')
    spec = load_cluster_spec(path, {"name": "from-flag", "region": "us-west-2", "worker_type": "ml.p5.48xlarge",
                                    "workers": 2, "availability_zone": None})
    assert (spec.name, spec.region) == ("from-flag", "us-west-2")
    assert (spec.workers[0].instance_type, spec.workers[0].count) == ("ml.p5.48xlarge", 2)
    assert spec.workers[0].partition == "ml.p5.48xlarge"


def test_region_comes_from_flag_then_file_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert load_cluster_spec(None, {}).region == "eu-west-1"
    path = tmp_path / "llamapod.toml"
    path.write_text('[cluster]\nregion = "us-west-2"\n')
    assert load_cluster_spec(path, {}).region == "us-west-2"
    assert load_cluster_spec(path, {"region": "ap-northeast-1"}).region == "ap-northeast-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert load_cluster_spec(None, {}).region == "us-east-1"


def test_bad_file_errors_name_the_file(tmp_path):
    path = tmp_path / "llamapod.toml"
    path.write_text("[cluster\nname = 1\n")
    with pytest.raises(ConfigError) as info:
        load_cluster_spec(path, {})
    assert info.value.message.startswith(f"config file {path} is not valid TOML")
    path.write_text("cluster = 3\n")
    with pytest.raises(ConfigError) as info:
        load_cluster_spec(path, {})
    assert info.value.message == f"config file {path}: `cluster` must be a table ([cluster]), not a value"
