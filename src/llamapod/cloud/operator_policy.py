"""The operator policy: what a person needs to run every llamapod command, and nothing that
leads to more (attached as two managed policies; see ``operator_policy_parts``)."""

from __future__ import annotations

import json
from typing import Any

from llamapod.aws_names import CLUSTER_TAG
from llamapod.cloud.policies import (BUCKET_PREFIX, ROLE_PREFIX, SAGEMAKER_PRINCIPAL, SERVICE_LINKED_ROLE_SERVICES,
                                     SSM_DOCUMENTS, STACK_PREFIX, _doc, boundary_arn, instance_policy_arn)


# ---- the operator policy ----------------------------------------------------------
#
# Grouped by what each part of llamapod does. Describe/List calls cannot be scoped to
# resources in IAM, so they take "*". Everything that creates, changes or deletes is limited
# to names llamapod gives (llamapod-*, sagemaker-llamapod-*) or, for EC2, to resources tagged
# llamapod:cluster. IAM writes follow AWS's "delegate with a permissions boundary" pattern
# (IAM User Guide, "Permissions boundaries for IAM entities"): every role-changing action is
# allowed only on roles that carry llamapod's boundary, the only managed policy that may be
# attached is the instance policy, and the boundary itself can neither be changed nor removed.

READ_ACTIONS = (
    # doctor
    "servicequotas:ListServiceQuotas",
    "servicequotas:ListAWSDefaultServiceQuotas",
    "iam:SimulatePrincipalPolicy",
    "ec2:DescribeAvailabilityZones",
    "ec2:DescribeInstanceTypeOfferings",
    # network stack (CloudFormation acts with the caller's permissions)
    "cloudformation:DescribeStacks",
    "ec2:DescribeVpcs",
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSecurityGroupRules",
    "ec2:DescribeInternetGateways",
    "ec2:DescribeNatGateways",
    "ec2:DescribeAddresses",
    "ec2:DescribeRouteTables",
    "ec2:DescribeVpcEndpoints",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribePrefixLists",
    "ec2:DescribeTags",
    "ec2:DescribeAccountAttributes",
    # FSx, cluster, status; HyperPod's log groups (down finds them by name prefix)
    "fsx:DescribeFileSystems",
    "logs:DescribeLogGroups",
    # down: find leftovers by tag
    "tag:GetResources",
    "iam:ListRoles",
    "s3:ListAllMyBuckets",
    # ssh / ssm sessions
)

# What each EC2 create call of the network stack makes. A create call is allowed only when the
# request tags the new resource llamapod:cluster (CloudFormation passes the stack's tags and
# the resource's own Tags); the resources it builds on (the VPC of a subnet, the subnet and
# address of a NAT gateway...) must already carry the tag. Calls are grouped so that no call in
# a group acts on another member's resource type: a statement allowing CreateSubnet on "vpc/*"
# under a request-tag condition would let a tagged subnet be created in anyone's VPC.
TAGGED_CREATES = {
    "NewVpc": {"ec2:CreateVpc": "vpc", "ec2:AllocateAddress": "elastic-ip"},
    "NewInVpc": {"ec2:CreateSubnet": "subnet", "ec2:CreateRouteTable": "route-table",
                                 "ec2:CreateSecurityGroup": "security-group"},
    "NewGateways": {"ec2:CreateInternetGateway": "internet-gateway", "ec2:CreateNatGateway": "natgateway",
                               "ec2:CreateVpcEndpoint": "vpc-endpoint"},
}
CREATE_ACTIONS = tuple(action for group in TAGGED_CREATES.values() for action in group)

# Calls on resources that already carry llamapod:cluster (aws:ResourceTag), including the
# create calls that build on an existing resource (a subnet's VPC, a NAT gateway's subnet and
# address, an endpoint's route tables).
TAGGED_NETWORK_ACTIONS = (
    "ec2:CreateSubnet", "ec2:CreateNatGateway", "ec2:CreateRouteTable", "ec2:CreateSecurityGroup",
    "ec2:CreateVpcEndpoint",
    "ec2:DeleteVpc", "ec2:ModifyVpcAttribute", "ec2:DescribeVpcAttribute",
    "ec2:DeleteSubnet", "ec2:ModifySubnetAttribute",
    "ec2:DeleteInternetGateway", "ec2:AttachInternetGateway", "ec2:DetachInternetGateway",
    "ec2:ReleaseAddress", "ec2:DeleteNatGateway",
    "ec2:DeleteRouteTable", "ec2:CreateRoute", "ec2:DeleteRoute",
    "ec2:AssociateRouteTable", "ec2:DisassociateRouteTable",
    "ec2:DeleteSecurityGroup",
    "ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress",
    "ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress",
    "ec2:DeleteVpcEndpoints", "ec2:CreateTags",
    # CreateFileSystem checks the security groups of the VPC with the caller's rights.
    "ec2:GetSecurityGroupsForVpc",
)

# Role changes allowed only on roles whose boundary is llamapod's (iam:PermissionsBoundary is
# the boundary a request sets, or the one the role already has). Every one of these accepts
# the key (Service Authorization Reference, IAM).
BOUNDED_ROLE_ACTIONS = (
    "iam:CreateRole", "iam:DeleteRole", "iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:AttachRolePolicy",
    "iam:DetachRolePolicy", "iam:PutRolePermissionsBoundary",
)

# What no one holding the operator policy may do to the boundary: change its document, delete
# it (then re-create it broader), or take it off a role. Denied outright, so that no other
# policy of the same person can grant it either.
BOUNDARY_PROTECTION = ("iam:CreatePolicyVersion", "iam:DeletePolicy", "iam:DeletePolicyVersion",
                       "iam:SetDefaultPolicyVersion", "iam:DeleteRolePermissionsBoundary")


def _network_statements(acct: str, partition: str) -> list[dict[str, Any]]:
    tagged = {"Null": {f"aws:RequestTag/{CLUSTER_TAG}": "false"}}
    statements: list[dict[str, Any]] = [
        {"Sid": sid, "Effect": "Allow", "Action": list(group),
         # Create calls make resources only in the caller's account, so the account is left open.
         "Resource": [f"arn:{partition}:ec2:*:*:{kind}/*" for kind in group.values()], "Condition": tagged}
        for sid, group in TAGGED_CREATES.items()
    ]
    statements += [
        {"Sid": "TagOnCreate", "Effect": "Allow", "Action": "ec2:CreateTags",
         # Tagging an existing resource llamapod:cluster would hand it to the statement below;
         # tags may be written only by the create calls above (or on resources already tagged).
         "Resource": f"arn:{partition}:ec2:*:{acct}:*/*",
         # Any create call: only the calls allowed above exist for this policy's holder.
         "Condition": {"Null": {"ec2:CreateAction": "false"}}},
        {"Sid": "NetworkResources", "Effect": "Allow", "Action": sorted(TAGGED_NETWORK_ACTIONS),
         "Resource": f"arn:{partition}:ec2:*:{acct}:*",
         "Condition": {"Null": {f"aws:ResourceTag/{CLUSTER_TAG}": "false"}}},
        {"Sid": "GroupRules", "Effect": "Allow",
         "Action": ["ec2:AuthorizeSecurityGroupEgress", "ec2:AuthorizeSecurityGroupIngress"],
         # Exception: a rule is a resource of its own, and CloudFormation's SecurityGroupIngress
         # and SecurityGroupEgress have no Tags property, so a new rule carries no tag. The group
         # it is added to is checked by NetworkResources.
         "Resource": f"arn:{partition}:ec2:*:{acct}:security-group-rule/*"},
    ]
    return statements


def _role_statements(acct: str, partition: str) -> list[dict[str, Any]]:
    role_arn = f"arn:{partition}:iam::{acct}:role/{ROLE_PREFIX}*"
    bounded = {"iam:PermissionsBoundary": boundary_arn(acct, partition)}
    return [
        {"Sid": "ExecutionRole", "Effect": "Allow",
         # Reads and tags: tags grant nothing here (no llamapod policy keys on IAM role tags).
         "Action": ["iam:GetRole", "iam:ListRolePolicies", "iam:ListRoleTags", "iam:TagRole",
                    "iam:ListAttachedRolePolicies", "iam:ListInstanceProfilesForRole"],
         "Resource": role_arn},
        {"Sid": "RolesInBoundary", "Effect": "Allow", "Action": list(BOUNDED_ROLE_ACTIONS),
         "Resource": role_arn,
         # iam:PolicyARN is in the request of AttachRolePolicy/DetachRolePolicy only: the one
         # managed policy that may be attached is the instance policy.
         "Condition": {"ArnEquals": bounded, "ArnEqualsIfExists": {"iam:PolicyARN": instance_policy_arn(partition)}}},
        {"Sid": "LeaveProfiles", "Effect": "Allow",
         # Deleting a role first detaches it from any instance profile (none are created by llamapod).
         "Action": "iam:RemoveRoleFromInstanceProfile",
         "Resource": f"arn:{partition}:iam::{acct}:instance-profile/*"},
        {"Sid": "PassRoleToSageMaker", "Effect": "Allow", "Action": "iam:PassRole",
         "Resource": role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": SAGEMAKER_PRINCIPAL}}},
        {"Sid": "Boundary", "Effect": "Allow",
         # Created once per account by the first `up`; read to check it is llamapod's document.
         "Action": ["iam:CreatePolicy", "iam:GetPolicy", "iam:GetPolicyVersion"],
         "Resource": boundary_arn(acct, partition)},
        {"Sid": "ProtectBoundary", "Effect": "Deny", "Action": list(BOUNDARY_PROTECTION),
         "Resource": [boundary_arn(acct, partition), f"arn:{partition}:iam::{acct}:role/*"]},
    ]


def operator_policy(account: str = "*", partition: str = "aws") -> dict[str, Any]:
    """The least-privilege policy a person needs to run every llamapod command."""
    acct = account or "*"
    stack_arn = f"arn:{partition}:cloudformation:*:{acct}:stack/{STACK_PREFIX}*/*"
    cluster_arn = f"arn:{partition}:sagemaker:*:{acct}:cluster/*"
    service_roles = f"arn:{partition}:iam::{acct}:role/aws-service-role"
    return _doc(
        {"Sid": "LookUps", "Effect": "Allow", "Action": sorted(READ_ACTIONS), "Resource": "*"},
        {"Sid": "NetworkStack", "Effect": "Allow",
         "Action": ["cloudformation:CreateStack", "cloudformation:DeleteStack", "cloudformation:DescribeStackEvents",
                    "cloudformation:TagResource"],
         "Resource": stack_arn},
        *_network_statements(acct, partition),
        {"Sid": "FileSystem", "Effect": "Allow",
         # FSx creates its network interfaces with its service-linked role (AmazonFSxServiceRolePolicy),
         # not with the caller's rights, so no EC2 interface writes are needed here.
         "Action": ["fsx:CreateFileSystem", "fsx:DeleteFileSystem", "fsx:TagResource"],
         "Resource": f"arn:{partition}:fsx:*:{acct}:file-system/*"},
        {"Sid": "ServiceLinkedRoles", "Effect": "Allow", "Action": "iam:CreateServiceLinkedRole",
         "Resource": f"{service_roles}/*",
         "Condition": {"StringEquals": {"iam:AWSServiceName": list(SERVICE_LINKED_ROLE_SERVICES)}}},
        *_role_statements(acct, partition),
        {"Sid": "LifecycleBucket", "Effect": "Allow",
         "Action": ["s3:CreateBucket", "s3:DeleteBucket", "s3:ListBucket", "s3:ListBucketVersions",
                    "s3:GetBucketTagging", "s3:PutBucketTagging", "s3:PutBucketPolicy",
                    "s3:PutBucketPublicAccessBlock", "s3:PutEncryptionConfiguration", "s3:PutBucketVersioning"],
         "Resource": f"arn:{partition}:s3:::{BUCKET_PREFIX}*"},
        {"Sid": "LifecycleObjects", "Effect": "Allow",
         "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
         "Resource": f"arn:{partition}:s3:::{BUCKET_PREFIX}*/*"},
        {"Sid": "HyperPodCluster", "Effect": "Allow",
         "Action": ["sagemaker:CreateCluster", "sagemaker:DeleteCluster", "sagemaker:DescribeCluster",
                    "sagemaker:DescribeClusterNode", "sagemaker:ListClusterNodes", "sagemaker:AddTags",
                    "sagemaker:ListTags"],
         "Resource": cluster_arn},
        {"Sid": "NodeSessions", "Effect": "Allow", "Action": "ssm:StartSession",
         # `llamapod ssh`: SSH through SSM, and one command per session to install a key.
         "Resource": [cluster_arn] + [f"arn:{partition}:ssm:*:*:document/{doc}" for doc in SSM_DOCUMENTS]},
        {"Sid": "OwnSessions", "Effect": "Allow", "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
         "Resource": f"arn:{partition}:ssm:*:{acct}:session/*"},
        # HyperPod's node logs outlive the cluster (untagged, created by the instance role).
        {"Sid": "ClusterLogs", "Effect": "Allow", "Action": "logs:DeleteLogGroup",
         "Resource": f"arn:{partition}:logs:*:{acct}:log-group:/aws/sagemaker/Clusters/*"},
    )


# IAM quota: a managed policy holds at most 6,144 characters, whitespace not counted (IAM
# User Guide, "IAM and AWS STS quotas"). The whole operator policy is larger once scoped to an
# account, so it is attached as two managed policies; together they grant exactly the whole.
MANAGED_POLICY_MAX_CHARS = 6144
NETWORK_PART_SIDS = ("LookUps", "NetworkStack", "NewVpc", "NewInVpc", "NewGateways", "TagOnCreate",
                     "NetworkResources", "GroupRules")


def operator_policy_parts(account: str = "*", partition: str = "aws") -> dict[str, dict[str, Any]]:
    """The operator policy split for attaching: {"network": ..., "cluster": ...}.

    ``network`` holds the look-ups and everything the VPC stack needs; ``cluster`` the file
    system, roles, bucket, cluster, sessions and logs.
    """
    statements = operator_policy(account, partition)["Statement"]
    network = [s for s in statements if s["Sid"] in NETWORK_PART_SIDS]
    cluster = [s for s in statements if s["Sid"] not in NETWORK_PART_SIDS]
    return {"network": _doc(*network), "cluster": _doc(*cluster)}


def policy_chars(policy: dict[str, Any]) -> int:
    """The length IAM counts against the managed-policy quota (no whitespace)."""
    return len(json.dumps(policy, separators=(",", ":")))


def policy_actions(policy: dict[str, Any]) -> set[str]:
    """Every action an Allow statement of ``policy`` names."""
    actions: set[str] = set()
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        named = statement["Action"]
        actions.update([named] if isinstance(named, str) else named)
    return actions


# boto3 operations whose IAM action is not simply "<prefix>:<OperationName>".
_SERVICE_PREFIX = {"service-quotas": "servicequotas", "resourcegroupstaggingapi": "tag"}
_ACTION_FOR_OPERATION = {
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "ListObjectVersions"): "s3:ListBucketVersions",
    ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("s3", "ListBuckets"): "s3:ListAllMyBuckets",
    ("s3", "PutPublicAccessBlock"): "s3:PutBucketPublicAccessBlock",
    ("s3", "GetPublicAccessBlock"): "s3:GetBucketPublicAccessBlock",
    ("s3", "PutBucketEncryption"): "s3:PutEncryptionConfiguration",
    ("s3", "GetBucketEncryption"): "s3:GetEncryptionConfiguration",
    ("s3", "DeleteBucketPolicy"): "s3:DeleteBucketPolicy",
    ("s3", "UploadFile"): "s3:PutObject",
    ("sts", "GetCallerIdentity"): None,  # needs no permission
}


def iam_action(service: str, operation: str) -> str | None:
    """The IAM action that authorises ``operation`` (API name) of boto3 ``service``; None = none needed."""
    if (service, operation) in _ACTION_FOR_OPERATION:
        return _ACTION_FOR_OPERATION[(service, operation)]
    return f"{_SERVICE_PREFIX.get(service, service)}:{operation}"
