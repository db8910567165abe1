"""The state file (ledger) and the waiting machinery of up/down: no AWS involved."""

from __future__ import annotations

import json
import threading

import pytest

from llamapod.cloud.ledger import Ledger, TaggedResource, console_link, has_cluster_tag, ledger_path
from llamapod.cloud.progress import Cancelled, Reporter, VirtualClock, Waiter, format_elapsed
from llamapod.errors import ClusterStateError, ConfigError


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAPOD_HOME", str(tmp_path))


def test_ledger_records_each_resource_as_soon_as_it_exists(tmp_path):
    ledger = Ledger.open("demo", "us-east-1")
    assert ledger_path("demo") == tmp_path / "clusters" / "demo.json"
    ledger.record("network", stack_name="llamapod-demo-network", stack_id="arn:stack")
    ledger.record("network", vpc_id="vpc-1", az_id=None)  # None never overwrites a fact

    saved = json.loads(ledger_path("demo").read_text())
    assert saved["region"] == "us-east-1"
    assert saved["resources"]["network"]["stack_id"] == "arn:stack"
    assert saved["resources"]["network"]["vpc_id"] == "vpc-1"
    assert "az_id" not in saved["resources"]["network"]

    again = Ledger.load("demo")
    assert again is not None and again.get("network")["vpc_id"] == "vpc-1"
    again.forget("network")
    assert Ledger.load("demo").get("network") is None


def test_ledger_writes_are_atomic_and_leave_no_temporary_files():
    ledger = Ledger.open("demo", "us-east-1")

    def writer(kind: str) -> None:
        for i in range(50):
            ledger.record(kind, id=f"{kind}-{i}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in ("fsx", "role", "bucket")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved = json.loads(ledger_path("demo").read_text())
    assert {k: v["id"] for k, v in saved["resources"].items()} == {"fsx": "fsx-49", "role": "role-49",
                                                                    "bucket": "bucket-49"}
    assert [p.name for p in ledger_path("demo").parent.iterdir()] == ["demo.json"]


def test_unreadable_ledger_names_the_file_and_the_way_out():
    path = ledger_path("demo")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ConfigError) as info:
        Ledger.load("demo")
    assert info.value.message.startswith(f"the state file {path} is unreadable (")
    assert info.value.hint == "delete it: `llamapod down demo` also finds every resource by its tag"


@pytest.mark.parametrize("content, problem", [
    ([], "expected a JSON object, found a list"),
    ({"name": "demo", "region": 5}, "'region' must be a non-empty string, found a number"),
    ({"region": "us-east-1"}, "'name' must be a non-empty string, found nothing (null or missing)"),
    ({"name": "demo", "region": "us-east-1", "resources": []},
     "'resources' must be an object of kind -> facts, found a list"),
    ({"name": "demo", "region": "us-east-1", "resources": {"network": "vpc-1"}},
     "resources.network must be an object of facts, found a string"),
    ({"name": "demo", "region": "us-east-1", "resources": {"cluster": {"arn": 7}}},
     "resources.cluster.arn must be a string or a list of strings, found a number"),
    ({"name": "demo", "region": "us-east-1", "resources": {"network": {"stack_name": ["x", 1]}}},
     "resources.network.stack_name must be a list of strings"),
    ({"name": "demo", "region": "us-east-1", "resources": {"vpc": {}}},
     "'resources' has an unknown kind 'vpc' (known: network, role, bucket, fsx, cluster)"),
])
def test_ledger_with_wrong_types_names_the_field(content, problem):
    path = ledger_path("demo")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as info:
        Ledger.load("demo")
    assert info.value.message == f"the state file {path} is damaged: {problem}"
    assert path.read_text() == json.dumps(content), "the file is left for the user to inspect"


def test_missing_ledger_is_none_and_remove_is_idempotent():
    assert Ledger.load("nothing") is None
    ledger = Ledger.open("demo", "eu-west-1")
    ledger.remove_file()
    ledger.remove_file()
    assert Ledger.load("demo") is None


def test_tags_and_arns():
    assert has_cluster_tag([{"Key": "llamapod:cluster", "Value": "demo"}], "demo")
    assert not has_cluster_tag([{"Key": "llamapod:cluster", "Value": "demo2"}], "demo")
    assert not has_cluster_tag(None, "demo")
    vpc = TaggedResource("arn:aws:ec2:us-east-1:123456789012:vpc/vpc-0abc")
    assert (vpc.kind, vpc.resource_id) == ("ec2:vpc", "vpc-0abc")
    bucket = TaggedResource("arn:aws:s3:::sagemaker-llamapod-demo-1")
    assert (bucket.kind, bucket.resource_id) == ("s3:bucket", "sagemaker-llamapod-demo-1")
    assert console_link(vpc.arn, "us-east-1") == (
        "https://us-east-1.console.aws.amazon.com/vpcconsole/home#VpcDetails:VpcId=vpc-0abc?region=us-east-1")
    assert console_link("arn:aws:fsx:us-east-1:1:file-system/fs-1", "us-east-1") == (
        "https://us-east-1.console.aws.amazon.com/fsx/home?region=us-east-1#file-system-details/fs-1")


def _waiter(clock) -> tuple[Waiter, list[str]]:
    lines: list[str] = []
    return Waiter(clock, threading.Event(), Reporter(clock, emit=lines.append)), lines


def test_parallel_waits_take_the_longest_not_the_sum():
    clock = VirtualClock()
    waiter, lines = _waiter(clock)

    def ready_after(seconds: float):
        start = clock.now()
        return lambda: waiter.until(f"thing {seconds:g}", lambda: clock.now() - start,
                                    lambda age: age >= seconds, timeout=3600, interval=30)

    ready_after(180)()
    waiter.parallel({"fsx": ready_after(600), "cluster": ready_after(1080)})
    assert clock.now() == 180 + 1080
    assert [(w.what, w.start, w.end) for w in waiter.reporter.waits] == [
        ("thing 180", 0, 180), ("thing 600", 180, 780), ("thing 1080", 180, 1260)]


def test_a_failing_step_cancels_the_others_and_its_error_is_raised():
    clock = VirtualClock()
    waiter, _ = _waiter(clock)

    def never_ready():
        return waiter.until("slow", lambda: None, lambda _: False, timeout=10**9, interval=1)

    def broken():
        raise ClusterStateError("cluster x failed: no capacity")

    with pytest.raises(ClusterStateError, match="no capacity"):
        waiter.parallel({"slow": never_ready, "broken": broken})
    assert waiter.cancel.is_set()
    with pytest.raises(Cancelled):
        clock.sleep(1, waiter.cancel)


def test_a_wait_past_its_deadline_says_what_and_how_long():
    clock = VirtualClock()
    waiter, lines = _waiter(clock)
    with pytest.raises(ClusterStateError) as info:
        waiter.until("FSx fs-1", lambda: "CREATING", lambda s: False, timeout=3600, interval=30,
                     describe=lambda s: s)
    assert info.value.message == "FSx fs-1 did not finish within 1h00m00s"
    assert info.value.hint == "check it in the AWS console; run the same command again to keep waiting"
    assert lines == ["  [0m00s] FSx fs-1: CREATING"]  # one line per change, not per poll


def test_format_elapsed():
    assert format_elapsed(0) == "0m00s"
    assert format_elapsed(1260) == "21m00s"
    assert format_elapsed(3725) == "1h02m05s"


def test_failure_hints_name_the_usual_causes():
    from llamapod.cloud.hyperpod import failure_hint

    assert failure_hint("ResourceLimitExceeded: quota for ml.g5.48xlarge for cluster usage is 0").startswith(
        "`llamapod doctor` shows which quota is short")
    assert failure_hint("InsufficientInstanceCapacity in use1-az4").startswith(
        "AWS has no capacity for this instance type in the chosen availability zone")
    assert failure_hint("something else") == (
        "fix the cause named above, then run `llamapod down` and `llamapod up` again")


def test_cost_so_far_is_list_price_times_age():
    from llamapod.cloud.status import _cost_so_far, _hourly, status_lines

    groups = [{"name": "controller-machine", "instance_type": "ml.c5.xlarge", "current": 1, "target": 1},
              {"name": "worker-group-1", "instance_type": "ml.g5.48xlarge", "current": 2, "target": 4}]
    assert _hourly(groups) == round(0.238 + 2 * 20.36, 2)
    assert _cost_so_far(groups, 1800) == round((0.238 + 4 * 20.36) / 2, 2)
    assert _hourly([{"name": "x", "instance_type": "ml.unknown", "current": 1, "target": 1}]) is None
    lines = status_lines({"name": "demo", "region": "us-east-1", "status": "InService", "age_s": 1800,
                          "failure_message": None, "node_counts": {"Running": 5},
                          "fsx": {"id": "fs-1", "state": "AVAILABLE", "dns_name": "fs-1.fsx"},
                          "hourly_usd": 81.68, "cost_so_far_usd": 40.84})
    assert lines == ["cluster demo (us-east-1): InService, age 30m00s", "  nodes: 5 Running",
                     "  FSx: fs-1 AVAILABLE (fs-1.fsx)",
                     "  cost: $81.68/h for instances now; about $40.84 so far (list prices, estimate)"]


def test_a_poll_that_fails_transiently_keeps_waiting_but_other_errors_stop_it():
    from llamapod.errors import CloudError

    clock = VirtualClock()
    waiter, lines = _waiter(clock)
    answers = iter([CloudError("describe_cluster", "ThrottlingException", "Rate exceeded"), "Creating", "InService"])

    def probe():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert waiter.until("cluster demo", probe, lambda s: s == "InService", timeout=600, interval=20,
                        describe=lambda s: s) == "InService"
    assert lines == ["  [0m00s] cluster demo: ThrottlingException from AWS, polling again",
                     "  [0m20s] cluster demo: Creating", "  [0m40s] cluster demo: InService"]

    def denied():
        raise CloudError("describe_cluster", "AccessDeniedException", "not allowed")

    with pytest.raises(CloudError, match="AccessDeniedException"):
        waiter.until("cluster demo", denied, lambda s: True, timeout=600, interval=20)
