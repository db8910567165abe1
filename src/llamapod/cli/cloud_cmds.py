"""``llamapod init``, ``doctor``, ``plan`` and ``operator-policy``: everything before ``up``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from llamapod.cli import ui

_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                              help="llamapod.toml to read (default: ./llamapod.toml, else the seed's cluster)")
_profile_option = click.option("--profile", help="AWS profile (default: AWS_PROFILE or the default profile)")
_region_option = click.option("--region", help="AWS region (overrides cluster.region)")
_name_option = click.option("--name", help="cluster name (overrides cluster.name)")
_worker_type_option = click.option("--worker-type", help="instance type of the first worker group, e.g. ml.g5.48xlarge")
_workers_option = click.option("--workers", type=int, help="number of instances in the first worker group")
_az_option = click.option("--az", help="availability zone, as a name (us-east-1a) or an ID (use1-az4)")


def _spec_lookup_options(command):
    """The options of commands that read a cluster spec and look things up in AWS (doctor, plan)."""
    for option in reversed((_config_option, _name_option, _region_option, _worker_type_option,
                            _workers_option, _az_option, _profile_option)):
        command = option(command)
    return command


def _overrides(**flags: Any) -> dict[str, Any]:
    return {"name": flags.get("name"), "region": flags.get("region"), "availability_zone": flags.get("az"),
            "worker_type": flags.get("worker_type"), "workers": flags.get("workers")}


# Settings a flag sets, so a problem with a flag's value names the flag the user typed.
_FLAG_OF_SETTING = {"name": ("cluster.name", "--name"), "region": ("cluster.region", "--region"),
                    "availability_zone": ("cluster.availability_zone", "--az"),
                    "worker_type": ("cluster.workers[0].instance_type", "--worker-type"),
                    "workers": ("cluster.workers[0].count", "--workers")}


def _blame_flags(exc, overrides: dict[str, Any]):
    """Rewrite problems about values that came from flags to name the flag."""
    for key, (setting, flag) in _FLAG_OF_SETTING.items():
        if overrides.get(key) is None:
            continue
        exc.problems = [f"{flag}{p[len(setting):]}" if p.startswith(setting + " ") else p for p in exc.problems]
        exc.message = exc.message.replace(f": {setting} ", f": {flag} ")
    return exc


def _spec_or_error(build, overrides: dict[str, Any]):
    from llamapod.errors import ConfigError

    try:
        return build()
    except ConfigError as exc:
        raise _blame_flags(exc, overrides) from None


def _load_spec(config_path: Path | None, overrides: dict[str, Any]):
    from llamapod.config.cluster import load_cluster_spec
    from llamapod.config.files import default_config_path

    path = config_path or default_config_path()
    if path is None:
        ui.info("no llamapod.toml here: using the seed's cluster (run `llamapod init` to write one)")
    return _spec_or_error(lambda: load_cluster_spec(path, overrides), overrides)


def _session(region: str, profile: str | None):
    from llamapod.cloud.session import AwsSession

    return AwsSession(region=region, profile=profile)


# ---- init -------------------------------------------------------------------------


@click.command()
@click.option("--path", "path", type=click.Path(dir_okay=False, path_type=Path), default=Path("llamapod.toml"),
              show_default=True, help="file to write")
@_name_option
@_region_option
@_worker_type_option
@_workers_option
@_az_option
@click.option("--force", is_flag=True, help="overwrite an existing file")
def init(path: Path, force: bool, **flags: Any) -> None:
    """Write a commented llamapod.toml (the seed's cluster and training job, unless flags say otherwise)."""
    from llamapod.config.cluster import apply_overrides, spec_from_table
    from llamapod.errors import ConfigError

    overrides = _overrides(**flags)
    # Every flag is checked before anything is written.
    spec = _spec_or_error(lambda: spec_from_table(apply_overrides({}, overrides)), overrides)
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists", "pass --force to overwrite it, or --path to write elsewhere")
    text = render_config(spec)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", "check the folder exists and is writable") from None
    ui.success(f"wrote {path}: cluster {spec.name} in {spec.region}, "
               + ", ".join(f"{g.count} x {g.instance_type}" for g in spec.instance_groups))
    ui.info("next: `llamapod doctor`, then `llamapod plan`, then `llamapod up`")
    ui.out(str(path))


def _toml(value: Any) -> str:
    # JSON strings, numbers and booleans are valid TOML values.
    return json.dumps(value)


def render_config(spec) -> str:
    """llamapod.toml for ``spec``, with every optional setting shown commented out."""
    from llamapod.aws_names import CLUSTER_TAG
    from llamapod.config.cluster import NetworkSpec

    worker_blocks = []
    for group in spec.workers:
        worker_blocks.append(
            "[[cluster.workers]]\n"
            f"name = {_toml(group.name)}\n"
            f"instance_type = {_toml(group.instance_type)}\n"
            f"count = {group.count}\n"
            f"partition = {_toml(group.partition)}   # Slurm partition of these nodes\n")
    az = (f"availability_zone = {_toml(spec.availability_zone)}" if spec.availability_zone else
          '# availability_zone = "use1-az4"   # a name (us-east-1a) or an ID (use1-az4); '
          "default: one offering every instance type")
    fsx_throughput = (f"throughput_per_tib = {spec.fsx.throughput_per_tib}   # MB/s per TiB: 125, 250, 500 or 1000"
                      if spec.fsx.throughput_per_tib is not None else "# throughput_per_tib: only for PERSISTENT_*")
    net = NetworkSpec()
    first = spec.workers[0]
    return f"""\
# llamapod.toml: one file for the cluster (`llamapod up`) and the training job (`llamapod train`).
# The defaults reproduce the seed guide: Llama 2 7B with FSDP on 4 x ml.g5.48xlarge (32 A10G GPUs).
# Check with `llamapod doctor`, review with `llamapod plan`, create with `llamapod up`,
# delete everything with `llamapod down`.

[cluster]
name = {_toml(spec.name)}   # 1-63 letters, digits or hyphens
region = {_toml(spec.region)}
{az}
threads_per_core = {spec.threads_per_core}   # 1 = hyperthreading off (as in the seed), 2 = on
node_recovery = {_toml(spec.node_recovery)}   # Automatic: HyperPod replaces failed nodes; or "None"
# deep_health_checks = ["InstanceStress", "InstanceConnectivity"]   # GPU groups; adds time to creation
# ebs_volume_gb = 500   # an extra EBS volume per node, mounted at /opt/sagemaker
cluster_user = {_toml(spec.cluster_user)}   # the login user; its home moves to /fsx/<user>
# shared_users = [{{ name = "alice", uid = 2001 }}]   # more users on every node, fixed uids 1000-60000
# containers = true   # Docker/enroot data on the workers' NVMe, pyxis for srun --container-image

# The Slurm controller (head node): exactly one instance.
[cluster.controller]
name = {_toml(spec.controller.name)}
instance_type = {_toml(spec.controller.instance_type)}
count = 1

# An optional login node group, where people connect and submit jobs.
# [cluster.login]
# name = "login-group"
# instance_type = "ml.m5.4xlarge"
# count = 1

# Worker groups: repeat [[cluster.workers]] for several groups (one Slurm partition each).
{"".join(worker_blocks).rstrip()}

# Shared file system, mounted at /fsx on every node.
[cluster.fsx]
capacity_gib = {spec.fsx.capacity_gib}   # 1200 or a multiple of 2400
deployment_type = {_toml(spec.fsx.deployment_type)}
{fsx_throughput}
compression = {_toml(spec.fsx.compression)}

# [cluster.network]
# vpc_cidr = "{net.vpc_cidr}"
# public_subnet_cidr = "{net.public_subnet_cidr}"
# private_subnet_cidr = "{net.private_subnet_cidr}"

# Slurm accounting (slurmdbd on the controller) against a MySQL/MariaDB you run, e.g. Amazon RDS.
# [cluster.accounting]
# storage_host = "slurm-db.cluster-abc.us-east-1.rds.amazonaws.com"
# storage_user = "slurm"
# storage_pass = "..."

# Extra tags on everything llamapod creates ({CLUSTER_TAG} is always added).
[cluster.tags]

# The seed's training job (step 7): Llama 2 7B, its flags as written in the guide. Everything
# it does not name has the reference FSDP example's default (lr 1e-4, activation checkpointing
# on, 5000 steps, the allenai/c4 dataset, ...: `llamapod train --help` lists them).
# `llamapod train --cluster {spec.name}` runs it on the cluster; flags on the command line win.
[train]
model_type = "llama_v2"
max_context_width = 2048
num_key_value_heads = 32
llama_intermediate_size = 11008
hidden_width = 4096
num_layers = 32
num_heads = 32
tokenizer = "hf-internal-testing/llama-tokenizer"
checkpoint_freq = 500
validation_freq = 500
checkpoint_dir = "./checkpoints"
train_batch_size = 1
val_batch_size = 4
epochs = 1
validation_batches = 1
resume_from_checkpoint = "./checkpoints"

# How the job is submitted to Slurm (nodes and GPUs per node follow the instance type).
[slurm]
job_name = "llama2-7b-fsdp"
nodes = {first.count}
partition = {_toml(first.partition)}
instance_type = {_toml(first.instance_type)}
rdzv_port = 29500
"""


# ---- doctor -----------------------------------------------------------------------

_SYMBOLS = {"ok": "ok", "fail": "FAIL", "unknown": "??"}


@click.command()
@_spec_lookup_options
@click.option("--strict", is_flag=True, help="fail when a check cannot be answered")
@click.option("--json", "as_json", is_flag=True, help="print the checks as JSON")
def doctor(config_path: Path | None, profile: str | None, strict: bool, as_json: bool, **flags: Any) -> None:
    """Check credentials, region, AZ, quotas and permissions before `up`."""
    from llamapod.cloud.preflight import run_checks

    spec = _load_spec(config_path, _overrides(**flags))
    ui.step(f"checking {spec.name} in {spec.region}: "
            + ", ".join(f"{n} x {t}" for t, n in sorted(spec.instance_counts().items())))
    checks = run_checks(_session(spec.region, profile), spec)
    if as_json:
        ui.out_json([{"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix} for c in checks])
    else:
        ui.table(["check", "result", "detail"], [(c.name, _SYMBOLS[c.status], c.detail) for c in checks])
        for check in checks:
            if check.status != "ok" and check.fix:
                ui.info(f"{check.name}: {check.fix}")
    failed = [c for c in checks if c.status == "fail"]
    unknown = [c for c in checks if c.status == "unknown"]
    if failed or (strict and unknown):
        ui.error(f"{len(failed)} check{'s' if len(failed) != 1 else ''} failed"
                 + (f", {len(unknown)} could not be answered" if unknown else ""),
                 "fix what each line says, then run `llamapod doctor` again")
        raise click.exceptions.Exit(1)
    if unknown:
        ui.warn(f"{len(unknown)} check{'s' if len(unknown) != 1 else ''} could not be answered by this endpoint; "
                "`up` will go ahead (use --strict to require them)")
    else:
        ui.success("ready for `llamapod up`")


# ---- plan -------------------------------------------------------------------------


def _look_up(session, spec) -> tuple[str | None, str | None]:
    """(account, AZ ID) from AWS, each None when it cannot be looked up."""
    from llamapod.cloud import preflight

    # One attempt: the plan is complete without the look-ups, so a slow answer is not worth a wait.
    credentials = preflight.check_credentials(session, attempts=1)
    account = credentials.data.get("account")
    if credentials.status != "ok":
        ui.warn(f"account not looked up ({credentials.detail}): names that contain it are placeholders")
    region, zones = preflight.check_region(session, spec) if account else (None, [])
    az = preflight.check_availability_zone(session, spec, zones) if zones else None
    resolved = preflight.resolved_availability_zone([az]) if az is not None else None
    if az is not None and az.status == "fail":
        ui.warn(f"availability zone: {az.detail} ({az.fix})")
    elif resolved is None and account:
        ui.warn("availability zone not resolved: `up` resolves it")
    if resolved is None and spec.availability_zone_kind == "id":
        return account, spec.availability_zone  # an AZ ID needs no look-up to be used
    return account, resolved[0] if resolved else None


@click.command()
@_spec_lookup_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("llamapod-plan"),
              show_default=True, help="folder for the artifacts")
def plan(config_path: Path | None, profile: str | None, out_dir: Path, **flags: Any) -> None:
    """Show everything `up` would create, with its hourly cost, and write the exact artifacts."""
    from llamapod.cloud import plan as planning

    spec = _load_spec(config_path, _overrides(**flags))
    account, az_id = _look_up(_session(spec.region, profile), spec)
    result = planning.build_plan(spec, account, az_id)
    ui.table(["resource", "name", "what"], [(r.kind, r.name, r.detail) for r in result.resources],
             title=f"`llamapod up` would create in {spec.region} (account {result.account}):")
    ui.out()
    rows = []
    for group, itype, count, cost in planning.cost_lines(spec):
        rows.append((group, itype, count, "unknown" if cost is None else f"${cost:,.2f}"))
    total = planning.hourly_cost(spec)
    rows.append(("total", "", spec.total_instances, "unknown" if total is None else f"${total:,.2f}"))
    ui.table(["instance group", "type", "count", "USD/hour (estimate)"], rows,
             title="Estimated on-demand instance cost (us-east-1 list prices; FSx, NAT and storage extra):")
    _report_train_memory(config_path, spec)
    files = planning.write_artifacts(spec, out_dir, account=account, az_id=az_id)
    ui.out()
    ui.out(f"wrote {len(files)} files to {out_dir}/: " + ", ".join(f.name for f in files))
    ui.out("values known only once resources exist are written as <...>:")
    for key, why in result.placeholders.items():
        ui.out(f"  {key}: {why}")


def _report_train_memory(config_path: Path | None, spec) -> None:
    """The [train] job's estimated peak memory per GPU on the cluster's workers, and whether it fits."""
    from llamapod.config.train import resolve_model_args
    from llamapod.errors import ConfigError
    from llamapod.sizing.fit import assess_memory, describe_fit, describe_parts, fit_hint

    try:
        train_spec, hardware = _planned_training(config_path, spec)
        fit = assess_memory(train_spec, resolve_model_args(train_spec), **hardware)
    except ConfigError as exc:
        ui.warn(f"the [train] job's memory was not estimated: {exc.message}")
        return
    if fit is None:
        return
    ui.out()
    ui.out(f"[train] job on {hardware['nodes']} x {hardware['instance_type']}: {describe_fit(fit)}")
    ui.out(f"  {describe_parts(fit.estimate)}")
    if not fit.fits:
        ui.warn(f"the [train] job would not fit in GPU memory: {fit_hint(fit)}")


def _planned_training(config_path: Path | None, spec) -> tuple[Any, dict[str, Any]]:
    """The [train] job and the hardware it gets: [slurm]'s choices, else the cluster's worker group.

    Without a llamapod.toml the plan is the seed's cluster, and the job is the seed's: the
    [train] and [slurm] tables `llamapod init` would write.
    """
    import tempfile

    from llamapod.config.files import default_config_path, load_table
    from llamapod.config.train_flags import read_train_args
    from llamapod.instances import instance_info

    path = config_path or default_config_path()
    with tempfile.TemporaryDirectory() as folder:
        if path is None:
            path = Path(folder) / "llamapod.toml"
            path.write_text(render_config(spec), encoding="utf-8")
        train_spec = read_train_args([], config_path=path).spec
        slurm = load_table(path, "slurm")
    group = next((g for g in spec.workers if g.partition == slurm.get("partition")), spec.workers[0])
    instance_type = slurm.get("instance_type") or group.instance_type
    hardware = {"instance_type": instance_type, "nodes": int(slurm.get("nodes") or group.count),
                "gpus_per_node": int(slurm.get("gpus_per_node") or instance_info(instance_type).gpus or 1)}
    return train_spec, hardware


# ---- operator-policy --------------------------------------------------------------


@click.command(name="operator-policy")
@click.option("--account", help="AWS account id to scope the policy to (default: look it up; '*' if that fails)")
@click.option("--part", type=click.Choice(["network", "cluster"]),
              help="print one of the two managed policies to attach (the whole exceeds IAM's 6,144 characters)")
@_region_option
@_profile_option
def operator_policy(account: str | None, part: str | None, region: str | None, profile: str | None) -> None:
    """Print the least-privilege IAM policy a user needs to run llamapod."""
    from llamapod.cloud.operator_policy import MANAGED_POLICY_MAX_CHARS, operator_policy_parts, policy_chars
    from llamapod.cloud.operator_policy import operator_policy as build_policy
    from llamapod.aws_names import partition_of
    from llamapod.config.cluster import DEFAULT_REGION
    from llamapod.errors import ConfigError

    if account is not None and not (account == "*" or (account.isdigit() and len(account) == 12)):
        raise ConfigError(f"--account must be a 12-digit AWS account id (got {account!r})",
                          "find it with `aws sts get-caller-identity`, or leave --account out")
    from llamapod.validate import aws_profile_problem, region_problem, require

    if region is not None:
        require(region_problem(region), region, "--region", "pass a region code such as us-east-1")
    if profile is not None:
        require(aws_profile_problem(profile), profile, "--profile", "pass a profile name from ~/.aws/config")
    region = region or DEFAULT_REGION
    if account is None:
        from llamapod.cloud.preflight import check_credentials

        credentials = check_credentials(_session(region, profile), attempts=1)
        account = credentials.data.get("account", "*")
        if credentials.status != "ok":
            ui.warn(f"account not looked up ({credentials.detail}): the policy names any account ('*')")
    if part is not None:
        ui.out(json.dumps(operator_policy_parts(account, partition_of(region))[part], indent=2))
        return
    whole = build_policy(account, partition_of(region))
    ui.out(json.dumps(whole, indent=2))
    if policy_chars(whole) > MANAGED_POLICY_MAX_CHARS:
        ui.info(f"this policy has {policy_chars(whole):,} characters, more than a managed policy holds "
                f"({MANAGED_POLICY_MAX_CHARS:,}): attach it as two, `--part network` and `--part cluster`, "
                f"or as a role's inline policy")
