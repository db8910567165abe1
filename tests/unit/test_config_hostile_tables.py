"""llamapod.toml typos and wrong types: every unknown table or key is an error with a suggestion,
booleans are not numbers, and non-finite numbers are refused, in every table this file's
loaders read ([cluster] with its nested tables, [slurm], [remote], and the file's top level)."""

from __future__ import annotations

import copy
import math
import typing

import pytest
from pydantic import BaseModel

from llamapod.config.cluster import ClusterSpec, load_cluster_spec, spec_from_table
from llamapod.config.train_flags import parse_train_args
from llamapod.errors import ConfigError
from llamapod.workflows.connect import RemoteSettings, load_remote_settings
from llamapod.slurm.spec import SlurmJob, load_slurm_job

SEED = {
    "name": "demo",
    "region": "us-east-1",
    "controller": {"name": "controller-machine", "instance_type": "ml.c5.xlarge", "count": 1},
    "login": {"name": "login-group", "instance_type": "ml.m5.4xlarge", "count": 1},
    "workers": [{"name": "worker-group-1", "instance_type": "ml.g5.48xlarge", "count": 4}],
    "threads_per_core": 1,
    "ebs_volume_gb": 500,
    "fsx": {"capacity_gib": 1200, "deployment_type": "PERSISTENT_2", "throughput_per_tib": 250},
}
NOT_NUMBERS = (True, False, math.inf, -math.inf, math.nan, 1.5)

LOADERS = {
    "cluster": lambda path: load_cluster_spec(path),
    "slurm": lambda path: load_slurm_job(path),
    "remote": lambda path: load_remote_settings(path),
    "train": lambda path: parse_train_args([], config_path=path),
}


def _config(tmp_path, text: str):
    path = tmp_path / "llamapod.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_misspelt_top_level_table_is_an_error_for_every_reader(tmp_path, loader):
    path = _config(tmp_path, '[clustr]\nname = "mine"\ninstance_type = "ml.g5.xlarge"\n')
    with pytest.raises(ConfigError) as err:
        LOADERS[loader](path)
    assert err.value.message == f"config file {path}: unknown table [clustr]; did you mean [cluster]?"
    assert err.value.hint == "llamapod.toml holds only the tables [cluster], [train], [slurm], [remote]"


def test_settings_outside_any_table_and_odd_keys_are_errors_on_one_line(tmp_path):
    path = _config(tmp_path, 'name = "mine"\n"a\\nb" = 1\n[slurm]\nnodes = 1\n')
    with pytest.raises(ConfigError) as err:
        load_slurm_job(path)
    assert err.value.message == (f"config file {path}: name is set outside any table (llamapod reads settings "
                                 "only inside its tables)")
    assert err.value.problems == ["'a\\nb' is set outside any table (llamapod reads settings only inside its tables)"]


@pytest.mark.parametrize("table, key, suggestion", [
    ("cluster.login", "instance_tpye", "instance_type"), ("cluster.controller", "cout", "count"),
    ("cluster.network", "vpc_cdir", "vpc_cidr"), ("cluster.fsx", "compresion", "compression"),
    ("cluster", "regoin", "region"),
])
def test_unknown_keys_in_nested_cluster_tables_suggest_the_right_one(tmp_path, table, key, suggestion):
    path = _config(tmp_path, f'[{table}]\n{key} = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_cluster_spec(path)
    found = [p for p in [err.value.message, *err.value.problems] if f"{table}.{key} is not a setting" in p]
    assert found and found[0].endswith(f"did you mean {suggestion}?"), [err.value.message, *err.value.problems]


def test_unknown_remote_and_slurm_keys_suggest_the_right_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_remote_settings(_config(tmp_path, '[remote]\nidentity_fiel = "~/.ssh/k"\n'))
    assert err.value.message.endswith("remote.identity_fiel: not a setting llamapod knows; did you mean identity_file?")
    with pytest.raises(ConfigError) as err:
        load_slurm_job(_config(tmp_path, "[slurm]\nnode = 2\n"))
    assert err.value.hint == "did you mean 'nodes'?"


def _numeric_paths(model: type[BaseModel], prefix: tuple = ()) -> typing.Iterator[tuple]:
    """Dotted paths of every int or float field of a model, through nested models and tuples of them."""
    for name, field in model.model_fields.items():
        for kind in _kinds(field.annotation):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from _numeric_paths(kind, prefix + (name,))
            elif kind in (int, float):
                yield prefix + (name,)


def _kinds(annotation) -> list:
    args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(annotation) in (typing.Union, tuple, list) or type(annotation).__name__ == "UnionType":
        return [k for a in args for k in _kinds(a)]
    return [annotation]


CLUSTER_NUMBERS = sorted(set(_numeric_paths(ClusterSpec)))


# Valid contents for optional tables the seed leaves out, so a number inside them can be set.
OPTIONAL_TABLES = {"accounting": {"storage_host": "db.internal", "storage_user": "slurm", "storage_pass": "secret"},
                   "shared_users": [{"name": "alice", "uid": 2001}]}


def _set(table: dict, path: tuple, value) -> dict:
    table = copy.deepcopy(table)
    target = table
    for part in path[:-1]:
        if part not in target and part in OPTIONAL_TABLES:
            target[part] = copy.deepcopy(OPTIONAL_TABLES[part])
        target = target[part][0] if isinstance(target[part], list) else target[part]
    target[path[-1]] = value
    return table


def test_every_numeric_cluster_setting_is_found():
    assert {("threads_per_core",), ("ebs_volume_gb",), ("controller", "count"), ("login", "count"),
            ("workers", "count"), ("fsx", "capacity_gib"), ("fsx", "throughput_per_tib")} <= set(CLUSTER_NUMBERS)


@pytest.mark.parametrize("path", CLUSTER_NUMBERS, ids=".".join)
@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_no_cluster_number_takes_a_boolean_or_a_non_finite_value(path, value):
    spec_from_table(SEED)  # the seed itself is valid
    with pytest.raises(ConfigError) as err:
        spec_from_table(_set(SEED, path, value))
    where = "cluster." + ".".join(p if p not in ("workers", "shared_users") else f"{p}[0]" for p in path)
    assert any(p.startswith(where + " ") for p in [err.value.message.split(": ", 1)[-1], *err.value.problems])


def _int_fields(model: type[BaseModel]) -> list[str]:
    return [name for name, field in model.model_fields.items() if set(_kinds(field.annotation)) & {int, float}]


@pytest.mark.parametrize("field", _int_fields(SlurmJob))
@pytest.mark.parametrize("literal", ["true", "false", "inf", "nan", "-inf", "2.0"])
def test_no_slurm_number_takes_a_boolean_or_a_non_finite_value(tmp_path, field, literal):
    with pytest.raises(ConfigError) as err:
        load_slurm_job(_config(tmp_path, f"[slurm]\n{field} = {literal}\n"))
    assert err.value.message.startswith(f"[slurm] {field} in ")


@pytest.mark.parametrize("field", _int_fields(RemoteSettings))
@pytest.mark.parametrize("literal", ["true", "false", "inf", "nan", "-inf", "22.0"])
def test_no_remote_number_takes_a_boolean_or_a_non_finite_value(tmp_path, field, literal):
    with pytest.raises(ConfigError) as err:
        load_remote_settings(_config(tmp_path, f"[remote]\n{field} = {literal}\n"))
    assert f"remote.{field}: " in err.value.message


@pytest.mark.parametrize("table, field", [("slurm", "exclusive"), ("slurm", "requeue"), ("slurm", "hyperpod"),
                                          ("remote", "pip_no_index"), ("remote", "system_site_packages")])
def test_flags_are_not_numbers_either(tmp_path, table, field):
    with pytest.raises(ConfigError):
        LOADERS[table](_config(tmp_path, f"[{table}]\n{field} = 1\n"))
