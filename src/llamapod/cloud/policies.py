"""Every IAM document llamapod writes or asks for.

- the execution role HyperPod nodes run as: trusted by SageMaker for this account only,
  the AWS-managed instance policy, the network-interface permissions HyperPod needs to
  attach nodes to the VPC (and so reach FSx), and read access to its own lifecycle bucket;
- the lifecycle bucket's policy (TLS only);
- the operator policy: the least a person needs to run ``llamapod`` (replacing the seed's
  seven *FullAccess policies).

All of them pass the ``parliament`` linter with no findings (a test checks it).
"""

from __future__ import annotations

from typing import Any

VERSION = "2012-10-17"
INSTANCE_POLICY = "AmazonSageMakerClusterInstanceRolePolicy"
NETWORK_POLICY_NAME = "llamapod-network-interfaces"
BUCKET_POLICY_NAME = "llamapod-lifecycle-read"

# Names llamapod gives what it creates; the operator policy is scoped to them.
ROLE_PREFIX = "llamapod-"
BUCKET_PREFIX = "sagemaker-llamapod-"
STACK_PREFIX = "llamapod-"
SSM_DOCUMENTS = ("AWS-StartSSHSession", "AWS-StartNonInteractiveCommand")


def _doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": list(statements)}


def managed_policy_arns(partition: str = "aws") -> list[str]:
    """AWS-managed policies attached to the execution role."""
    return [f"arn:{partition}:iam::aws:policy/{INSTANCE_POLICY}"]


def execution_role_trust_policy(account: str, partition: str = "aws") -> dict[str, Any]:
    """SageMaker may assume the role, but only on behalf of this account (confused deputy)."""
    return _doc({
        "Sid": "SageMakerHyperPodForThisAccount",
        "Effect": "Allow",
        "Principal": {"Service": "sagemaker.amazonaws.com"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account}},
    })


def network_interface_policy(partition: str = "aws") -> dict[str, Any]:
    """What HyperPod needs to put nodes' network interfaces in our VPC (the seed's vpc_policy)."""
    return _doc(
        {
            "Sid": "NodeNetworkInterfaces",
            "Effect": "Allow",
            "Action": [
                "ec2:DeleteNetworkInterfacePermission",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeVpcs",
                "ec2:DescribeDhcpOptions",
                "ec2:DescribeSubnets",
                "ec2:DescribeSecurityGroups",
            ],
            "Resource": "*",
        },
        {
            # Interfaces are created in the cluster's subnet and security group, which
            # live in this account; the ARNs name no account, as the seed's policy did not.
            "Sid": "ManageNodeNetworkInterfaces",
            "Effect": "Allow",
            "Action": [
                "ec2:CreateNetworkInterface",
                "ec2:CreateNetworkInterfacePermission",
                "ec2:DeleteNetworkInterface",
                "ec2:DetachNetworkInterface",
            ],
            "Resource": [
                f"arn:{partition}:ec2:*:*:network-interface/*",
                f"arn:{partition}:ec2:*:*:subnet/*",
                f"arn:{partition}:ec2:*:*:security-group/*",
                f"arn:{partition}:ec2:*:*:instance/*",
            ],
        },
        {
            "Sid": "TagOwnNetworkInterfaces",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": f"arn:{partition}:ec2:*:*:network-interface/*",
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
        NETWORK_POLICY_NAME: network_interface_policy(partition),
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


# ---- the operator policy ----------------------------------------------------------
#
# Grouped by what each part of llamapod does. Describe/List calls cannot be scoped
# to resources in IAM, so they take "*"; everything that creates, changes or deletes
# is limited to names llamapod gives (llamapod-*, sagemaker-llamapod-*) where the
# service supports resource-level permissions.

READ_ACTIONS = (
    # doctor
    "servicequotas:ListServiceQuotas",
    "servicequotas:GetServiceQuota",
    "iam:SimulatePrincipalPolicy",
    "ec2:DescribeAvailabilityZones",
    "ec2:DescribeInstanceTypeOfferings",
    # network stack (CloudFormation acts with the caller's permissions)
    "cloudformation:DescribeStacks",
    "cloudformation:ValidateTemplate",
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
    # FSx, cluster, status
    "fsx:DescribeFileSystems",
    "sagemaker:ListClusters",
    # down: find leftovers by tag
    "tag:GetResources",
    "iam:ListRoles",
    "s3:ListAllMyBuckets",
    # ssh / ssm sessions
    "ssm:DescribeSessions",
)

NETWORK_WRITE_ACTIONS = (
    "ec2:CreateVpc", "ec2:DeleteVpc", "ec2:ModifyVpcAttribute", "ec2:DescribeVpcAttribute",
    "ec2:CreateSubnet", "ec2:DeleteSubnet", "ec2:ModifySubnetAttribute",
    "ec2:CreateInternetGateway", "ec2:DeleteInternetGateway",
    "ec2:AttachInternetGateway", "ec2:DetachInternetGateway",
    "ec2:AllocateAddress", "ec2:ReleaseAddress",
    "ec2:CreateNatGateway", "ec2:DeleteNatGateway",
    "ec2:CreateRouteTable", "ec2:DeleteRouteTable", "ec2:CreateRoute", "ec2:DeleteRoute",
    "ec2:AssociateRouteTable", "ec2:DisassociateRouteTable",
    "ec2:CreateSecurityGroup", "ec2:DeleteSecurityGroup",
    "ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress",
    "ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress",
    "ec2:CreateVpcEndpoint", "ec2:DeleteVpcEndpoints", "ec2:ModifyVpcEndpoint",
    "ec2:CreateTags", "ec2:DeleteTags",
    # FSx places its network interfaces in our subnet with the caller's rights.
    "ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
    "ec2:DeleteNetworkInterface", "ec2:DetachNetworkInterface",
)


def operator_policy(account: str = "*", partition: str = "aws") -> dict[str, Any]:
    """The least-privilege policy a person needs to run every llamapod command."""
    acct = account or "*"
    role_arn = f"arn:{partition}:iam::{acct}:role/{ROLE_PREFIX}*"
    stack_arn = f"arn:{partition}:cloudformation:*:{acct}:stack/{STACK_PREFIX}*/*"
    cluster_arn = f"arn:{partition}:sagemaker:*:{acct}:cluster/*"
    return _doc(
        {"Sid": "LookUps", "Effect": "Allow", "Action": sorted(READ_ACTIONS), "Resource": "*"},
        {"Sid": "NetworkStack", "Effect": "Allow",
         "Action": ["cloudformation:CreateStack", "cloudformation:DeleteStack", "cloudformation:UpdateStack",
                    "cloudformation:DescribeStackEvents", "cloudformation:DescribeStackResources",
                    "cloudformation:ListStackResources", "cloudformation:TagResource"],
         "Resource": stack_arn},
        {"Sid": "NetworkResources", "Effect": "Allow", "Action": sorted(NETWORK_WRITE_ACTIONS),
         # This account's EC2 resources, plus AWS-owned prefix lists (the S3 gateway endpoint's).
         "Resource": [f"arn:{partition}:ec2:*:{acct}:*", f"arn:{partition}:ec2:*:*:prefix-list/*"]},
        {"Sid": "FileSystem", "Effect": "Allow",
         "Action": ["fsx:CreateFileSystem", "fsx:DeleteFileSystem", "fsx:TagResource"],
         "Resource": f"arn:{partition}:fsx:*:{acct}:file-system/*"},
        {"Sid": "FsxServiceLinkedRole", "Effect": "Allow", "Action": "iam:CreateServiceLinkedRole",
         "Resource": f"arn:{partition}:iam::{acct}:role/aws-service-role/*",
         "Condition": {"StringEquals": {"iam:AWSServiceName": ["fsx.amazonaws.com",
                                                               "s3.data-source.lustre.fsx.amazonaws.com"]}}},
        {"Sid": "ExecutionRole", "Effect": "Allow",
         "Action": ["iam:CreateRole", "iam:DeleteRole", "iam:GetRole", "iam:TagRole", "iam:UntagRole",
                    "iam:ListRoleTags", "iam:PutRolePolicy", "iam:GetRolePolicy", "iam:DeleteRolePolicy",
                    "iam:ListRolePolicies", "iam:AttachRolePolicy", "iam:DetachRolePolicy",
                    "iam:ListAttachedRolePolicies", "iam:ListInstanceProfilesForRole"],
         "Resource": role_arn},
        {"Sid": "DetachRoleFromInstanceProfiles", "Effect": "Allow",
         # Deleting a role first detaches it from any instance profile (none are created by llamapod).
         "Action": "iam:RemoveRoleFromInstanceProfile",
         "Resource": f"arn:{partition}:iam::{acct}:instance-profile/*"},
        {"Sid": "PassExecutionRoleToSageMaker", "Effect": "Allow", "Action": "iam:PassRole",
         "Resource": role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}},
        {"Sid": "LifecycleBucket", "Effect": "Allow",
         "Action": ["s3:CreateBucket", "s3:DeleteBucket", "s3:ListBucket", "s3:ListBucketVersions",
                    "s3:GetBucketLocation", "s3:GetBucketTagging", "s3:PutBucketTagging",
                    "s3:PutBucketPolicy", "s3:GetBucketPolicy", "s3:DeleteBucketPolicy",
                    "s3:PutBucketPublicAccessBlock", "s3:GetBucketPublicAccessBlock",
                    "s3:PutEncryptionConfiguration", "s3:GetEncryptionConfiguration",
                    "s3:PutBucketVersioning", "s3:GetBucketVersioning", "s3:PutBucketOwnershipControls"],
         "Resource": f"arn:{partition}:s3:::{BUCKET_PREFIX}*"},
        {"Sid": "LifecycleObjects", "Effect": "Allow",
         "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
         "Resource": f"arn:{partition}:s3:::{BUCKET_PREFIX}*/*"},
        {"Sid": "HyperPodCluster", "Effect": "Allow",
         "Action": ["sagemaker:CreateCluster", "sagemaker:DeleteCluster", "sagemaker:UpdateCluster",
                    "sagemaker:DescribeCluster", "sagemaker:DescribeClusterNode", "sagemaker:ListClusterNodes",
                    "sagemaker:AddTags", "sagemaker:DeleteTags", "sagemaker:ListTags"],
         "Resource": cluster_arn},
        {"Sid": "NodeSessions", "Effect": "Allow", "Action": "ssm:StartSession",
         # `llamapod ssh`: SSH through SSM, and one command per session to install a key.
         "Resource": [cluster_arn] + [f"arn:{partition}:ssm:*:*:document/{doc}" for doc in SSM_DOCUMENTS]},
        {"Sid": "OwnSessions", "Effect": "Allow", "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
         "Resource": f"arn:{partition}:ssm:*:{acct}:session/*"},
    )


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
