"""Cluster names become state paths (~/.llamapod/clusters/<name>.json and <name>/): whatever the
name, the path stays inside the state folder, or the name is refused before anything is read."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.hostile import hostile_text
from llamapod import validate
from llamapod.cloud.ledger import Ledger, ledger_path
from llamapod.cloud.status import cluster_status
from llamapod.errors import ConfigError
from llamapod.workflows.connect import cluster_state_dir, resolve_cluster

names = st.one_of(st.from_regex(validate.CLUSTER_NAME, fullmatch=True), hostile_text,
                  st.sampled_from(["../../x", "..", ".", "a/b", "/etc/passwd", "x/../../y", "demo.json"]))


@pytest.fixture
def home(tmp_path, monkeypatch):
    state = tmp_path / "home"
    monkeypatch.setenv("LLAMAPOD_HOME", str(state))
    return state


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names)
def test_state_paths_stay_inside_the_state_folder(home, name):
    try:
        ledger, folder = ledger_path(name), cluster_state_dir(name)
    except ConfigError as err:
        assert "\n" not in err.message and err.message.startswith("cluster name must be 1-63 letters")
        return
    assert ledger.resolve().parent == (home / "clusters").resolve() and ledger.name == f"{name}.json"
    assert folder.resolve().parent == (home / "clusters").resolve() and folder.name == name


class _NoAws:
    """A session that fails the test if anything asks AWS: names are refused before any call."""

    region = "us-east-1"

    def client(self, *args, **kwargs):
        raise AssertionError("AWS was called for a name that should have been refused")


@pytest.mark.parametrize("name", ["../../x", "../home/clusters/demo", "a/b", "x\n", "-x"])
def test_lookups_refuse_a_name_before_touching_state_or_aws(home, name):
    outside = home.parent / "x.json"
    outside.write_text(json.dumps({"name": "x", "region": "us-east-1", "resources": {}}))
    before = outside.stat()
    for lookup in (lambda: Ledger.load(name), lambda: Ledger.open(name, "us-east-1"),
                   lambda: cluster_status(_NoAws(), name, None), lambda: resolve_cluster(name)):
        with pytest.raises(ConfigError, match=r"^cluster name must be 1-63 letters"):
            lookup()
    assert outside.stat() == before
    assert not (home / "clusters").exists()
