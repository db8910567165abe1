"""`llamapod doctor`'s checks against the AWS emulator (moto's HTTP server).

moto answers STS and the EC2 look-ups (zones, instance-type offerings by AZ ID) itself.
It does not implement Service Quotas for SageMaker nor IAM's SimulatePrincipalPolicy
(FACTS.md): where a test needs an answer from those, it is injected at the botocore level
(tests/fixtures/aws_answers.py: a `before-call` handler returning the structure the API
reference documents). Without an injection the emulator's own failure is what the checks
see: that is the "unknown" case.
"""

from __future__ import annotations

import pytest

from llamapod.cloud import preflight
from llamapod.cloud.session import AwsSession
from llamapod.config.cluster import spec_from_table
from llamapod.errors import CloudError

from fixtures.aws_answers import ACCOUNT, SEED_QUOTAS, inject, inject_quotas, quotas_answer, simulation_answer


@pytest.fixture
def session(aws_endpoint):
    # Doctor only reads, so the emulator is not reset between these tests: moto builds its
    # EC2 data (zones, instance-type offerings) once per reset, which takes seconds.
    return AwsSession(region="us-east-1", endpoint_url=aws_endpoint)


def seed(**changes):
    return spec_from_table(changes)


def by_name(checks):
    return {c.name: c for c in checks}


def test_everything_ok_picks_an_az_offering_every_type(session):
    quota_calls = inject(session, "service-quotas", "ListServiceQuotas", quotas_answer(SEED_QUOTAS))
    simulations = inject(session, "iam", "SimulatePrincipalPolicy", simulation_answer())
    checks = preflight.run_checks(session, seed())
    assert [(c.name, c.status) for c in checks] == [
        ("credentials", "ok"), ("region", "ok"), ("availability zone", "ok"),
        ("quota: ml.c5.xlarge for cluster usage", "ok"), ("quota: ml.g5.48xlarge for cluster usage", "ok"),
        (f"quota: {preflight.PER_CLUSTER_QUOTA}", "ok"), (f"quota: {preflight.TOTAL_QUOTA}", "ok"),
        ("permissions", "ok")]
    found = by_name(checks)
    assert found["credentials"].detail == f"account {ACCOUNT} as arn:aws:sts::{ACCOUNT}:user/moto"
    assert found["quota: ml.g5.48xlarge for cluster usage"].detail == "4 allowed, 4 needed"
    # moto offers g5.48xlarge in every us-east-1 zone but use1-az3; the first zone by name wins.
    assert found["availability zone"].detail == ("picked use1-az6 (us-east-1a), which offers ml.c5.xlarge, "
                                                 "ml.g5.48xlarge; set cluster.availability_zone = \"use1-az6\" "
                                                 "to keep it")
    assert preflight.resolved_availability_zone(checks) == ("use1-az6", "us-east-1a")
    assert len(quota_calls) == 2  # two pages
    # Every action of the operator policy was simulated, with resources named like up's.
    simulated = {a for call in simulations for a in call["ActionNames"]}
    from llamapod.cloud.operator_policy import operator_policy, policy_actions

    assert simulated == policy_actions(operator_policy(ACCOUNT))
    pass_role = next(c for c in simulations if c["ActionNames"] == ["iam:PassRole"])
    assert pass_role["ContextEntries"][0]["ContextKeyName"] == "iam:PassedToService"
    preflight.enforce(checks, strict=True)  # nothing to raise


def test_low_quota_says_what_to_request(session):
    quotas = dict(SEED_QUOTAS, **{"ml.g5.48xlarge for cluster usage": ("L-6A1B0C3D", 2.0)})
    inject(session, "service-quotas", "ListServiceQuotas", quotas_answer(quotas))
    inject(session, "iam", "SimulatePrincipalPolicy", simulation_answer())
    check = by_name(preflight.run_checks(session, seed()))["quota: ml.g5.48xlarge for cluster usage"]
    assert (check.status, check.detail) == ("fail", "2 allowed in us-east-1, 4 needed")
    assert check.fix == ("request an increase of 'ml.g5.48xlarge for cluster usage' to at least 4 in Service Quotas "
                         "(Amazon SageMaker, us-east-1): https://us-east-1.console.aws.amazon.com/servicequotas/"
                         "home/services/sagemaker/quotas/L-6A1B0C3D")


def test_quotas_are_summed_per_type_and_total(session):
    spec = seed(workers=[{"name": "a", "instance_type": "ml.g5.48xlarge", "count": 3},
                         {"name": "b", "instance_type": "ml.g5.48xlarge", "count": 3}])
    quotas = dict(SEED_QUOTAS, **{preflight.TOTAL_QUOTA: ("L-4D6E8F0A", 5.0)})
    inject(session, "service-quotas", "ListServiceQuotas", quotas_answer(quotas))
    checks = by_name(preflight.check_quotas(session, spec))
    assert checks["quota: ml.g5.48xlarge for cluster usage"].detail == "4 allowed in us-east-1, 6 needed"
    assert checks[f"quota: {preflight.TOTAL_QUOTA}"].detail == "5 allowed in us-east-1, 7 needed"


G5 = "ml.g5.48xlarge for cluster usage"


def test_a_quota_still_at_its_default_is_read_from_the_defaults(session):
    applied = {k: v for k, v in SEED_QUOTAS.items() if k != G5}  # ListServiceQuotas leaves it out
    defaults = {"other": ("L-1", 1.0), "another": ("L-2", 1.0), G5: ("L-6A1B0C3D", 0.0)}  # on the second page
    _, default_calls = inject_quotas(session, applied, defaults)
    check = by_name(preflight.check_quotas(session, seed()))[f"quota: {G5}"]
    assert (check.status, check.detail) == ("fail", "0 allowed in us-east-1 (the AWS default), 4 needed")
    assert check.fix.startswith(f"request an increase of '{G5}' to at least 4 in Service Quotas")
    assert default_calls == [{"ServiceCode": "sagemaker"}, {"ServiceCode": "sagemaker", "NextToken": "2"}]


def test_a_quota_listed_nowhere_is_unknown_not_a_failure(session):
    inject_quotas(session, {k: v for k, v in SEED_QUOTAS.items() if k != G5}, {})
    checks = preflight.check_quotas(session, seed())
    check = by_name(checks)[f"quota: {G5}"]
    assert (check.status, check.detail) == ("unknown", f"us-east-1 lists no SageMaker quota named '{G5}', "
                                                       "applied or default")
    preflight.enforce(checks)  # unknown warns, it does not stop `up`


def test_defaults_are_not_asked_for_when_every_quota_is_applied(session):
    _, default_calls = inject_quotas(session, SEED_QUOTAS, {})
    assert all(c.status == "ok" for c in preflight.check_quotas(session, seed()))
    assert default_calls == []


def test_what_the_emulator_cannot_answer_is_unknown_and_only_strict_blocks(session, capsys):
    checks = preflight.run_checks(session, seed())
    found = by_name(checks)
    assert found["quotas"].status == "unknown"
    assert found["quotas"].detail.startswith("SageMaker quotas could not be read: the endpoint does not answer "
                                             "list_service_quotas")
    assert found["permissions"].status == "unknown"
    assert found["availability zone"].status == "ok"
    preflight.enforce(checks, strict=False)
    assert "warning: quotas: not checked: SageMaker quotas could not be read" in capsys.readouterr().err
    with pytest.raises(CloudError) as info:
        preflight.enforce(checks, strict=True)
    assert info.value.message == "preflight failed: ChecksFailed: 2 preflight checks did not pass: quotas, permissions"
    assert [p.split(":")[0] for p in info.value.problems] == ["quotas", "permissions"]


def test_denied_actions_are_named(session):
    inject(session, "service-quotas", "ListServiceQuotas", quotas_answer(SEED_QUOTAS))
    inject(session, "iam", "SimulatePrincipalPolicy", simulation_answer({"iam:PassRole", "fsx:CreateFileSystem"}))
    checks = preflight.run_checks(session, seed())
    check = by_name(checks)["permissions"]
    assert check.status == "fail"
    assert check.detail == f"arn:aws:sts::{ACCOUNT}:user/moto may not call fsx:CreateFileSystem, iam:PassRole"
    assert check.fix == "attach the policy printed by `llamapod operator-policy` to this user or role"
    with pytest.raises(CloudError) as info:
        preflight.enforce(checks)
    assert info.value.hint == check.fix


@pytest.mark.parametrize("given,expected", [("us-east-1d", ("use1-az4", "us-east-1d")),
                                            ("use1-az4", ("use1-az4", "us-east-1d"))])
def test_az_given_as_name_or_id_resolves_to_both(session, given, expected):
    checks = preflight.run_checks(session, seed(availability_zone=given))
    assert preflight.resolved_availability_zone(checks) == expected
    assert by_name(checks)["availability zone"].detail == ("use1-az4 (us-east-1d) offers ml.c5.xlarge, "
                                                           "ml.g5.48xlarge")


def test_az_that_lacks_the_type_names_the_ones_that_have_it(session):
    _, zones = preflight.check_region(session, seed())
    check = preflight.check_availability_zone(session, seed(availability_zone="use1-az3"), zones)
    assert (check.status, check.detail) == ("fail", "use1-az3 (us-east-1e) does not offer ml.c5.xlarge, "
                                                    "ml.g5.48xlarge")
    assert check.fix == ("set cluster.availability_zone to one of: use1-az6 (us-east-1a), use1-az1 (us-east-1b), "
                         "use1-az2 (us-east-1c), use1-az4 (us-east-1d), use1-az5 (us-east-1f)")


def test_unknown_az_lists_the_regions_zones(session):
    _, zones = preflight.check_region(session, seed())
    check = preflight.check_availability_zone(session, seed(availability_zone="use1-az9"), zones)
    assert (check.status, check.detail) == ("fail", "use1-az9 is not an available zone of us-east-1")
    assert check.fix.startswith("set cluster.availability_zone to one of: us-east-1a (use1-az6), ")


def test_missing_credentials_fail_first(aws_endpoint, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    checks = preflight.run_checks(AwsSession(region="us-east-1", endpoint_url=aws_endpoint), seed())
    assert checks[0].name == "credentials"
    assert (checks[0].status, checks[0].detail) == ("fail", "no AWS credentials were found")
    assert [c.name for c in checks] == ["credentials", "region", "availability zone"]


def test_principal_of_an_assumed_role_is_the_role():
    assert preflight._principal_arn("arn:aws:sts::123456789012:assumed-role/Admin/alice") == \
        "arn:aws:iam::123456789012:role/Admin"
    assert preflight._principal_arn("arn:aws:iam::123456789012:user/bob") == "arn:aws:iam::123456789012:user/bob"
    assert preflight._principal_arn("arn:aws:iam::123456789012:root") is None


def test_a_role_iam_cannot_find_leaves_permissions_unknown(session):
    # IAM's documented error for an unknown PolicySourceArn: HTTP 404, code NoSuchEntity.
    from botocore.awsrequest import AWSResponse

    def not_found(**_):
        error = {"Error": {"Code": "NoSuchEntity", "Message": "Role Admin not found"},
                 "ResponseMetadata": {"HTTPStatusCode": 404}}
        return AWSResponse("https://injected.invalid/", 404, {}, None), error

    session.boto.events.register("before-call.iam.SimulatePrincipalPolicy", not_found)
    check = preflight.check_permissions(session, seed(), "arn:aws:sts::123456789012:assumed-role/Admin/alice",
                                        ACCOUNT)
    assert (check.status, check.detail) == (
        "unknown", "permissions of arn:aws:iam::123456789012:role/Admin could not be simulated: "
                   "simulate_principal_policy: IAM does not know the principal (NoSuchEntity); "
                   "is it a role with a path?")


def test_up_picks_a_zone_that_offers_every_group_type(session):
    from llamapod.cloud import network

    # In the emulator's us-east-1, g5.48xlarge is offered in use1-az1/2/4/5/6 and trn1.32xlarge only
    # in use1-az4/5/6: the largest group's type alone would pick use1-az1, where trn1 is not offered.
    spec = seed(workers=[{"name": "g5", "instance_type": "ml.g5.48xlarge", "count": 4},
                         {"name": "trn", "instance_type": "ml.trn1.32xlarge", "count": 1}])
    assert network.resolve_az_id(session, None, spec.instance_types) == "use1-az4"
    assert network.resolve_az_id(session, None, seed().instance_types) == "use1-az1"
