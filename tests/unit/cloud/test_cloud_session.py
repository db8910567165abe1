import pytest

from llamapod.cloud.session import AwsSession, call
from llamapod.errors import CloudError


def test_session_reaches_the_emulator(aws):
    session = AwsSession(region="us-east-1")
    assert session.account_id.isdigit()


def test_client_error_becomes_one_line_cloud_error(aws):
    session = AwsSession(region="us-east-1")
    with pytest.raises(CloudError) as info:
        call(session.client("sagemaker"), "describe_cluster", ClusterName="nope")
    assert info.value.op == "describe_cluster"
    assert "\n" not in str(info.value)
