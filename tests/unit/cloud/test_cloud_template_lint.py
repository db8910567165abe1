"""The network template: cfn-lint clean, and the network the seed's cluster needs."""

from __future__ import annotations

import yaml

from llamapod.cloud import plan


def _template() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    # Keep CloudFormation's short-form functions as {"!Ref": value} so the test can read them.
    def short_form(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return {f"!{suffix}": loader.construct_scalar(node)}
        return {f"!{suffix}": loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
                else loader.construct_mapping(node)}

    Loader.add_multi_constructor("!", short_form)
    return yaml.load(plan.network_template(), Loader=Loader)


def test_cfn_lint_has_no_findings(tmp_path):
    from cfnlint.api import ManualArgs, lint_file

    path = tmp_path / "network.yaml"
    path.write_text(plan.network_template())
    # Every region llamapod accepts for a cluster in the template's partition.
    matches = lint_file(path, ManualArgs(regions=["us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1"]))
    assert [str(m) for m in matches] == []


def test_template_builds_the_clusters_network():
    template = _template()
    resources = template["Resources"]
    kinds = sorted(r["Type"] for r in resources.values())
    for kind in ("AWS::EC2::VPC", "AWS::EC2::InternetGateway", "AWS::EC2::NatGateway", "AWS::EC2::EIP",
                 "AWS::EC2::SecurityGroup", "AWS::EC2::VPCEndpoint"):
        assert kind in kinds
    assert kinds.count("AWS::EC2::Subnet") == 2
    # Both subnets by AZ *ID*: names map to different zones in different accounts (the seed's trap).
    for subnet in ("PrivateSubnet", "PublicSubnet"):
        assert resources[subnet]["Properties"]["AvailabilityZoneId"] == {"!Ref": "AvailabilityZoneId"}
    assert resources["S3GatewayEndpoint"]["Properties"]["VpcEndpointType"] == "Gateway"
    assert resources["PrivateDefaultRoute"]["Properties"]["NatGatewayId"] == {"!Ref": "NatGateway"}
    assert set(template["Outputs"]) >= {"VpcId", "PrivateSubnetId", "SecurityGroupId"}


def test_security_group_admits_itself_and_lustre():
    resources = _template()["Resources"]
    rules = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    self_ref = {"!Ref": "ClusterSecurityGroup"}
    assert all(rule["SourceSecurityGroupId"] == self_ref for rule in rules)
    ports = {(rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")) for rule in rules}
    assert ports == {("-1", None, None), ("tcp", 988, 988), ("tcp", 1018, 1023)}
    egress = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupEgress"]
    assert egress[0]["DestinationSecurityGroupId"] == self_ref


def test_every_taggable_resource_carries_the_cluster_tag():
    resources = _template()["Resources"]
    for name, resource in resources.items():
        tags = resource.get("Properties", {}).get("Tags")
        if tags is not None:
            assert {"Key": "llamapod:cluster", "Value": {"!Ref": "ClusterName"}} in tags, name
