"""``llamapod up``, ``llamapod status`` and ``llamapod down``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from llamapod.aws_names import CLUSTER_TAG
from llamapod.cli import ui
from llamapod.errors import ClusterStateError, ConfigError

_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                              help="llamapod.toml to read (default: ./llamapod.toml, else the seed's cluster)")
_profile_option = click.option("--profile", help="AWS profile (default: AWS_PROFILE or the default profile)")
_region_option = click.option("--region", help="AWS region (default: cluster.region, then AWS_REGION)")


def _load_spec(config_path: Path | None, overrides: dict):
    from llamapod.config.cluster import load_cluster_spec
    from llamapod.config.files import default_config_path

    return load_cluster_spec(config_path or default_config_path(), overrides)


def _session(region: str | None, profile: str | None):
    from llamapod.cloud.session import AwsSession

    return AwsSession(region=region, profile=profile)


def _preflight(session, spec, strict: bool) -> str | None:
    """Run `doctor`'s checks; returns the AZ ID they resolved (None to let `up` resolve it)."""
    from llamapod.cloud import preflight

    checks = preflight.run_checks(session, spec)
    preflight.enforce(checks, strict=strict)
    resolved = preflight.resolved_availability_zone(checks)
    return resolved[0] if resolved else None


@click.command()
@_config_option
@click.option("--name", help="cluster name (overrides cluster.name)")
@click.option("--worker-type", help="instance type of the first worker group, e.g. ml.g5.48xlarge")
@click.option("--workers", type=int, help="number of instances in the first worker group")
@click.option("--az", help="availability zone, as a name (us-east-1a) or an ID (use1-az4)")
@_region_option
@_profile_option
@click.option("--strict", is_flag=True, help="treat checks the endpoint cannot answer as failures")
def up(config_path: Path | None, name: str | None, worker_type: str | None, workers: int | None, az: str | None,
       region: str | None, profile: str | None, strict: bool) -> None:
    """Create the network, FSx, role, bucket and HyperPod cluster (re-run it to continue)."""
    from llamapod.cloud.up import bring_up, summary_lines

    spec = _load_spec(config_path, {"name": name, "region": region, "worker_type": worker_type,
                                    "workers": workers, "availability_zone": az})
    session = _session(spec.region, profile)
    ui.step(f"checking account, quotas and permissions for {spec.name} in {spec.region}")
    az_id = _preflight(session, spec, strict)
    ui.step(f"creating cluster {spec.name} (about 20 minutes; Ctrl-C is safe, `llamapod up` continues)")
    result = bring_up(session, spec, az_id=az_id)
    ui.success(f"cluster {spec.name} is ready after {_minutes(result.elapsed_s)}")
    for line in summary_lines(result):
        ui.out(line)


@click.command()
@click.argument("name", required=False)
@_config_option
@_region_option
@_profile_option
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def status(name: str | None, config_path: Path | None, region: str | None, profile: str | None,
           as_json: bool) -> None:
    """Show the cluster, its instance groups and nodes, FSx, age and cost so far."""
    from llamapod.cloud.status import cluster_status, status_lines

    name, region, ledger = _target(name, config_path, region)
    session = _session(region, profile)
    result = cluster_status(session, name, ledger)
    if as_json:
        ui.out_json(result)
        return
    for line in status_lines(result):
        ui.out(line)
    ui.table(["group", "instance type", "running", "target"],
             [(g["name"], g["instance_type"], g["current"], g["target"]) for g in result["instance_groups"]])
    if result["nodes"]:
        ui.table(["node", "group", "status"], [(n["id"], n["group"], n["status"]) for n in result["nodes"]])


@click.command()
@click.argument("name", required=False)
@_config_option
@_region_option
@_profile_option
@click.option("--yes", "-y", is_flag=True, help="delete without asking")
def down(name: str | None, config_path: Path | None, region: str | None, profile: str | None, yes: bool) -> None:
    """Delete everything `up` created for the cluster, then prove nothing tagged for it is left."""
    from llamapod.cloud.down import leftovers, take_inventory, tear_down

    name, region, ledger = _target(name, config_path, region)
    session = _session(region, profile)
    ui.step(f"looking for everything tagged {CLUSTER_TAG}={name} in {session.region}")
    inventory = take_inventory(session, name, ledger)
    if inventory.empty:
        left = leftovers(session, name)
        if not left:
            if ledger is not None:
                ledger.remove_file()
            ui.success(f"nothing exists for cluster {name} in {session.region}: nothing to delete")
            return
        _report_leftovers(name, left)
    ui.table(["will delete", "name"], inventory.rows())
    if not yes:
        if not sys.stdin or not sys.stdin.isatty():
            raise ConfigError(f"refusing to delete {len(inventory.rows())} resources without confirmation "
                              f"(no terminal to ask on)", "re-run with --yes to delete without asking")
        if not ui.confirm(f"Delete these {len(inventory.rows())} resources of cluster {name}?"):
            ui.info("nothing was deleted")
            raise click.exceptions.Exit(1)
    left = tear_down(session, inventory, ledger)
    if left:
        _report_leftovers(name, left)
    ui.success(f"deleted cluster {name}: nothing tagged {CLUSTER_TAG}={name} or made by HyperPod for it "
               f"is left in {session.region}")


def _report_leftovers(name: str, left) -> None:
    ui.table(["still exists", "id", "console"], [(item.kind, item.id, item.link) for item in left])
    raise ClusterStateError(f"{len(left)} resource(s) of cluster {name} still exist",
                            "run `llamapod down` again; if they stay, delete them from the console links above")


def _target(name: str | None, config_path: Path | None, region: str | None):
    """The cluster's name, region and ledger, from the argument, the state file and llamapod.toml."""
    from llamapod import validate
    from llamapod.cloud.ledger import Ledger

    if region is not None:
        validate.require(validate.region_problem(region), region, "--region",
                         "pass an AWS region code such as us-east-1")
    spec = None
    if name is None:
        spec = _load_spec(config_path, {"region": region})
        name = spec.name
    elif config_path is not None:
        spec = _load_spec(config_path, {"name": name, "region": region})
    ledger = Ledger.load(name)
    if region is None:
        # Without a state file or config, AWS's own default (AWS_REGION, the profile) applies.
        region = ledger.region if ledger is not None else (spec.region if spec is not None else None)
    return name, region, ledger


def _minutes(seconds: float) -> str:
    from llamapod.cloud.progress import format_elapsed

    return format_elapsed(seconds)
