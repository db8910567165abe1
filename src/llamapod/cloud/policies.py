"""Every IAM document llamapod writes or asks for.

- the execution role HyperPod nodes run as: trusted by SageMaker, the AWS-managed instance
  policy, the network-interface permissions HyperPod needs to attach nodes to the VPC (and so
  reach FSx) in this account and region, and read access to its own lifecycle bucket;
- the permissions boundary every role llamapod creates carries: the most any such role can do,
  whatever policies are put on it;
- the lifecycle bucket's policy (TLS only);
- the operator policy (``operator_policy``): the least a person needs to run ``llamapod``
  (replacing the seed's seven *FullAccess policies), with no path to more than that.

All of them pass the ``parliament`` linter and ``cloudsplaining`` (tests check both).
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
