"""Every IAM document llamapod writes or asks for.

- the execution role HyperPod nodes run as: trusted by SageMaker, the AWS-managed instance
  policy, the network-interface permissions HyperPod needs to attach nodes to the VPC (and so
  reach FSx) in this account and region, and read access to its own lifecycle bucket;
- the permissions boundary every role llamapod creates carries: the most any such role can do,
  whatever policies are put on it;
- the lifecycle bucket's policy (TLS only);
- the operator policy: the least a person needs to run ``llamapod`` (replacing the seed's
  seven *FullAccess policies), with no path to more than that.

All of them pass the ``parliament`` linter and ``cloudsplaining`` (tests check both).
"""

from __future__ import annotations

import json

from typing import Any

from llamapod.aws_names import CLUSTER_TAG

VERSION = "2012-10-17"
INSTANCE_POLICY = "AmazonSageMakerClusterInstanceRolePolicy"
NETWORK_POLICY_NAME = "llamapod-network-interfaces"
BUCKET_POLICY_NAME = "llamapod-lifecycle-read"

# Names llamapod gives what it creates; the operator policy is scoped to them.
ROLE_PREFIX = "llamapod-"
BUCKET_PREFIX = "sagemaker-llamapod-"
STACK_PREFIX = "llamapod-"
SSM_DOCUMENTS = ("AWS-StartSSHSession", "AWS-StartNonInteractiveCommand")

# One boundary per account, shared by every llamapod cluster in it. A fixed name matters: the
# operator may create it once but never change or delete it (see operator_policy), so there is
# no moment after the first `up` at which someone could put a broader document under this name.
BOUNDARY_NAME = "llamapod-role-boundary"
BOUNDARY_DESCRIPTION = "The most a role created by llamapod may do (HyperPod nodes of llamapod clusters)"

# Service principals, from AWS's documentation:
# - the execution role is assumed by SageMaker ("AWS Identity and Access Management for SageMaker
#   HyperPod", docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-prerequisites-iam.html);
# - HyperPod's service-linked role AWSServiceRoleForSageMakerHyperPod (managed policy
#   AmazonSageMakerHyperPodServiceRolePolicy, which also writes the cluster's CloudWatch logs) is
#   created for the service name below, by CreateCluster with the caller's rights
#   (docs.aws.amazon.com/sagemaker/latest/dg/security-iam-awsmanpol-AmazonSageMakerHyperPodServiceRolePolicy.html;
#   the Service Authorization Reference lists iam:CreateServiceLinkedRole as a dependent action of
#   sagemaker:CreateCluster).
SAGEMAKER_PRINCIPAL = "sagemaker.amazonaws.com"
HYPERPOD_SERVICE_NAME = "hyperpod.sagemaker.amazonaws.com"
HYPERPOD_SERVICE_LINKED_ROLE = "AWSServiceRoleForSageMakerHyperPod"
# FSx's own; its S3 data-repository role is not needed (llamapod links no S3 bucket to /fsx).
FSX_SERVICE_NAMES = ("fsx.amazonaws.com",)
SERVICE_LINKED_ROLE_SERVICES = (*FSX_SERVICE_NAMES, HYPERPOD_SERVICE_NAME)


def _doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": list(statements)}


def managed_policy_arns(partition: str = "aws") -> list[str]:
    """AWS-managed policies attached to the execution role."""
    return [instance_policy_arn(partition)]


def instance_policy_arn(partition: str = "aws") -> str:
    return f"arn:{partition}:iam::aws:policy/{INSTANCE_POLICY}"


def boundary_arn(account: str, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account or '*'}:policy/{BOUNDARY_NAME}"


def execution_role_trust_policy(account: str, partition: str = "aws") -> dict[str, Any]:
    """SageMaker may assume the role, exactly as AWS's HyperPod IAM page documents it.

    That page (docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-prerequisites-iam.html,
    "IAM role for SageMaker HyperPod") trusts ``sagemaker.amazonaws.com`` with no condition, as do
    the reference's templates; SageMaker's cross-service confused-deputy page does not list
    HyperPod among the features that send ``aws:SourceAccount``/``aws:SourceArn``. A condition on
    a key the service does not send never matches, and CreateCluster could then not assume the
    role. The confused-deputy risk is closed elsewhere: SageMaker assumes the role only for a
    caller allowed ``iam:PassRole`` on it, which the operator policy grants for llamapod's roles
    in this account only.
    """
    return _doc({
        "Sid": "SageMakerHyperPodNodes",
        "Effect": "Allow",
        "Principal": {"Service": SAGEMAKER_PRINCIPAL},
        "Action": "sts:AssumeRole",
    })


# What HyperPod needs to put nodes' network interfaces in the cluster's VPC: the seed's
# vpc_policy, as listed on the HyperPod IAM page under "additional permissions for using
# SageMaker HyperPod with Amazon VPC".
NETWORK_LOOKUPS = ("ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                   "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups")
NETWORK_INTERFACE_WRITES = ("ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
                            "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission",
                            "ec2:DetachNetworkInterface")


def _ec2_arns(account: str, region: str, partition: str, *kinds: str) -> list[str]:
    return [f"arn:{partition}:ec2:{region}:{account}:{kind}/*" for kind in kinds]


def network_interface_policy(account: str, region: str, partition: str = "aws") -> dict[str, Any]:
    """Node network interfaces in this account's subnets and groups, in the cluster's region only."""
    return _doc(
        {
            # Describe calls cannot be scoped to resources in IAM.
            "Sid": "NodeNetworkLookups",
            "Effect": "Allow",
            "Action": list(NETWORK_LOOKUPS),
            "Resource": "*",
        },
        {
            "Sid": "ManageNodeNetworkInterfaces",
            "Effect": "Allow",
            "Action": list(NETWORK_INTERFACE_WRITES),
            "Resource": _ec2_arns(account, region, partition, "network-interface", "subnet", "security-group",
                                  "instance"),
        },
        {
            "Sid": "TagNodeNetworkInterfaces",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": _ec2_arns(account, region, partition, "network-interface"),
        },
    )


def lifecycle_read_policy(bucket: str, partition: str = "aws") -> dict[str, Any]:
    """Nodes read their lifecycle scripts from this one bucket, and nothing else of S3."""
    return _doc(
        {
            "Sid": "ListLifecycleBucket",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": f"arn:{partition}:s3:::{bucket}",
        },
        {
            "Sid": "ReadLifecycleScripts",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"arn:{partition}:s3:::{bucket}/*",
        },
    )


def execution_role_policies(spec: Any, account: str, bucket: str, region: str,
                            partition: str = "aws") -> dict[str, dict[str, Any]]:
    """Inline policies of the execution role, by name (the managed one is attached apart)."""
    return {
        NETWORK_POLICY_NAME: network_interface_policy(account, region, partition),
        BUCKET_POLICY_NAME: lifecycle_read_policy(bucket, partition),
    }


def bucket_policy(bucket: str, partition: str = "aws") -> dict[str, Any]:
    """Refuse any request to the lifecycle bucket that does not use TLS."""
    return _doc({
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "s3:*",
        "Resource": [f"arn:{partition}:s3:::{bucket}", f"arn:{partition}:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    })


# ---- the permissions boundary ------------------------------------------------------


def permissions_boundary(account: str, partition: str = "aws") -> dict[str, Any]:
    """The ceiling of every role llamapod creates: what HyperPod nodes need, in this account only.

    It covers the managed instance policy (CloudWatch logs and metrics of clusters, Session
    Manager channels, lifecycle scripts) and the inline network-interface policy, and nothing
    else, so a role the operator creates can never do more, whatever is put on it.
    """
    acct = account or "*"
    return _doc(
        {"Sid": "NodeNetworkLookups", "Effect": "Allow", "Action": list(NETWORK_LOOKUPS), "Resource": "*"},
        {"Sid": "NodeNetworkInterfaces", "Effect": "Allow",
         "Action": [*NETWORK_INTERFACE_WRITES, "ec2:CreateTags"],
         "Resource": _ec2_arns(acct, "*", partition, "network-interface", "subnet", "security-group", "instance")},
        {"Sid": "ListLifecycleBuckets", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:{partition}:s3:::{BUCKET_PREFIX}*",
         # Bucket names are global: only this account's buckets, whoever owns a name like ours.
         "Condition": {"StringEquals": {"aws:ResourceAccount": acct}}},
        {"Sid": "ReadLifecycleScripts", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"arn:{partition}:s3:::{BUCKET_PREFIX}*/*",
         "Condition": {"StringEquals": {"aws:ResourceAccount": acct}}},
        {"Sid": "ClusterLogGroups", "Effect": "Allow", "Action": "logs:CreateLogGroup",
         "Resource": f"arn:{partition}:logs:*:{acct}:log-group:/aws/sagemaker/Clusters/*"},
        {"Sid": "ClusterLogStreams", "Effect": "Allow",
         "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
         "Resource": f"arn:{partition}:logs:*:{acct}:log-group:/aws/sagemaker/Clusters/*:log-stream:*"},
        {"Sid": "ClusterMetrics", "Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
         "Condition": {"StringEquals": {"cloudwatch:namespace": "/aws/sagemaker/Clusters"}}},
        # Session Manager's channels have no resource type in IAM (Resource must be "*").
        {"Sid": "SessionManagerChannels", "Effect": "Allow",
         "Action": ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"],
         "Resource": "*"},
    )


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
