"""`up` runs doctor's checks before it creates anything (emulator as in test_cloud_up_flow.py)."""

from __future__ import annotations

from fixtures.aws import NOTHING, counts, resources_for


def test_up_strict_stops_before_creating_anything_when_a_check_cannot_be_answered(aws_gaps, cluster_name,
                                                                                  run_cli):
    # The emulator does not implement Service Quotas: with --strict that check blocks.
    code, out, err = run_cli("up", "--name", cluster_name, "--strict")
    assert code == 1
    assert "error: preflight failed: ChecksFailed:" in err
    assert "creating cluster" not in err
    assert aws_gaps.requests == {}
    assert counts(resources_for(aws_gaps.endpoint, cluster_name)) == NOTHING
