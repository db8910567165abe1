"""`up` and `down` with 20% of AWS calls answered by throttling or a 5xx.

The failures are injected at botocore's ``before-send`` event, in each service's wire
format (JSON, query, EC2, S3 XML), so botocore's retry logic (adaptive mode) sees them
exactly as it would see AWS's answers. Emulator gaps as in test_cloud_up_flow.py.
Only the waiting between retries is shortened (botocore's backoff and client-side rate
limiter sleep real seconds); which calls are retried, and that llamapod's flow survives,
is what this test checks.
"""

from __future__ import annotations

import pytest

from fixtures.aws import NOTHING, ONE_CLUSTER, Flaky, counts, install_on_sessions, resources_for
from llamapod.cloud.down import take_inventory, tear_down
from llamapod.cloud.ledger import Ledger
from llamapod.cloud.session import AwsSession
from llamapod.cloud.up import bring_up
from llamapod.config.cluster import load_cluster_spec


@pytest.fixture
def fast_retries(monkeypatch):
    from botocore.retries import adaptive, standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.001)
    monkeypatch.setattr(adaptive.ClientRateLimiter, "on_sending_request", lambda self, request, **kwargs: None)


def test_up_and_down_survive_20_percent_throttling_and_5xx(aws_gaps, cluster_name, monkeypatch, fast_retries):
    flaky = Flaky(rate=0.2, seed=20)
    install_on_sessions(monkeypatch, flaky.install)

    result = bring_up(AwsSession(region="us-east-1"), load_cluster_spec(None, {"name": cluster_name}))
    assert result.cluster_status == "InService"
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == ONE_CLUSTER

    session = AwsSession(region="us-east-1")
    ledger = Ledger.load(cluster_name)
    left = tear_down(session, take_inventory(session, cluster_name, ledger), ledger)
    assert left == []
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == NOTHING
    # The injection really happened, at about the rate asked for.
    assert flaky.injected >= 20
    assert 0.12 < flaky.injected / flaky.sent < 0.28
