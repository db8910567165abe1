"""Partitions and tag names: one home, agreeing with botocore's own data."""

from __future__ import annotations

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
