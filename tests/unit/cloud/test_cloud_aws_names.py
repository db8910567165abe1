"""Partitions and tag names: one home, agreeing with botocore's own data."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llamapod.aws_names import CLUSTER_TAG, PARTITIONS, cluster_tag, has_cluster_tag, partition_of, tag_text_ok


@pytest.mark.parametrize("partition", PARTITIONS)
def test_every_region_botocore_lists_is_in_its_own_partition(partition):
    import botocore.session

    regions = botocore.session.get_session().get_available_regions("ec2", partition_name=partition)
    assert regions
    assert {region: partition_of(region) for region in regions} == {region: partition for region in regions}


def test_the_cluster_tag_marks_one_cluster_only():
    tags = [{"Key": "team", "Value": "ml"}, cluster_tag("demo")]
    assert cluster_tag("demo") == {"Key": CLUSTER_TAG, "Value": "demo"}
    assert has_cluster_tag(tags, "demo")
    assert not has_cluster_tag(tags, "demo2") and not has_cluster_tag(None, "demo")
    assert not has_cluster_tag([{"Key": "Llamapod:Cluster", "Value": "demo"}], "demo")


@pytest.mark.parametrize("text, ok", [("Équipe ML", True), ("a+b=c@d:e_f.g/h-2", True), ("", True),
                                      ("ml;rm -rf", False), ("cost#center", False), ("tab\there", False)])
def test_tag_text_is_the_services_character_set(text, ok):
    assert tag_text_ok(text) is ok


def _code_strings(path) -> list[str]:
    """String constants of a module's code (f-string parts included), without its docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_tag_names_and_partitions_are_spelled_in_one_module():
    import llamapod
    import llamapod.aws_names

    src = Path(llamapod.__file__).parent
    home = Path(llamapod.aws_names.__file__)
    names = (CLUSTER_TAG, "aws-cn", "aws-us-gov")
    spelled = {path.relative_to(src).as_posix(): [s for s in _code_strings(path) if any(n in s for n in names)]
               for path in sorted(src.rglob("*.py")) if path != home}
    assert {path: found for path, found in spelled.items() if found} == {}
