"""The network template as CloudFormation runs it, in the AWS emulator (moto's HTTP server).

moto creates the EC2 resources of a stack (VPC, subnets, gateways, routes, security group
and its ingress rules); it skips AWS::EC2::SecurityGroupEgress and ignores a subnet's
AvailabilityZoneId (FACTS.md), so those two are checked by cfn-lint and the unit tests.
"""

from __future__ import annotations

import boto3

from llamapod.cloud import plan
from llamapod.config.cluster import spec_from_table


def test_stack_creates_the_network_and_its_outputs(aws):
    spec = spec_from_table({"name": "stack-test"})
    kwargs = {"endpoint_url": aws, "region_name": "us-east-1"}
    cloudformation = boto3.client("cloudformation", **kwargs)
    cloudformation.create_stack(StackName=plan.network_stack_name(spec), TemplateBody=plan.network_template(),
                                Parameters=plan.network_parameters(spec, "use1-az4"),
                                Tags=plan.resource_tags(spec))
    stack = cloudformation.describe_stacks(StackName=plan.network_stack_name(spec))["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["AvailabilityZoneId"] == "use1-az4"

    ec2 = boto3.client("ec2", **kwargs)
    subnet = ec2.describe_subnets(SubnetIds=[outputs["PrivateSubnetId"]])["Subnets"][0]
    assert (subnet["VpcId"], subnet["CidrBlock"]) == (outputs["VpcId"], "10.1.128.0/17")
    group = ec2.describe_security_groups(GroupIds=[outputs["SecurityGroupId"]])["SecurityGroups"][0]
    rules = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), tuple(g["GroupId"] for g in p["UserIdGroupPairs"]))
             for p in group["IpPermissions"]}
    own = (outputs["SecurityGroupId"],)
    assert rules == {("-1", None, None, own), ("tcp", 988, 988, own), ("tcp", 1018, 1023, own)}
    tagged = ec2.describe_vpcs(Filters=[{"Name": "tag:llamapod:cluster", "Values": ["stack-test"]}])["Vpcs"]
    assert [v["VpcId"] for v in tagged] == [outputs["VpcId"]]
    assert ec2.describe_nat_gateways(Filters=[{"Name": "vpc-id", "Values": [outputs["VpcId"]]}])["NatGateways"]
    endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [outputs["VpcId"]]}])
    assert [e["ServiceName"] for e in endpoints["VpcEndpoints"]] == ["com.amazonaws.us-east-1.s3"]
