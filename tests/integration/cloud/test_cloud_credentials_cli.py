"""A broken local AWS setup: every cloud command says what to fix in one line, never "internal error".

The real CLI runs against the AWS emulator's endpoint (nothing can reach a real account);
what is broken is this machine's setup, exactly as a user would break it: a mistyped
--profile or AWS_PROFILE, half of a key pair in the environment, a malformed
~/.aws/config or ~/.aws/credentials.
"""

from __future__ import annotations

import pytest

COMMANDS = [
    ["status", "demo"],
    ["doctor"],
    ["plan"],
    ["down", "demo", "--yes"],
    ["up"],
    ["ssh", "--cluster", "demo", "--", "true"],
    ["jobs", "--cluster", "demo"],
]
# ssh and jobs take the profile from llamapod.toml's [remote] table, not from --profile.
WITH_PROFILE_FLAG = {"status", "doctor", "plan", "down", "up"}

PROBLEMS = {
    "mistyped --profile": (
        {}, ["--profile", "prod-typo"],
        ["error: AWS profile 'prod-typo' (from --profile) is not in {config} or {credentials}",
         "  hint: profiles here: default, prod; create it with `aws configure --profile prod-typo`"]),
    "mistyped AWS_PROFILE": (
        {"AWS_PROFILE": "prdo"}, [],
        ["error: AWS profile 'prdo' (from AWS_PROFILE) is not in {config} or {credentials}",
         "  hint: profiles here: default, prod; unset AWS_PROFILE to use the default credentials, "
         "or create it with `aws configure --profile prdo`"]),
    "only the access key id": (
        {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": None}, [],
        ["error: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
         "  hint: export AWS_SECRET_ACCESS_KEY as well, or unset AWS_ACCESS_KEY_ID to use your profile "
         "(`aws configure`)"]),
    "malformed config file": (
        {"AWS_CONFIG_FILE": "{broken}"}, [],
        ["error: the AWS config file {broken} cannot be parsed (line 2: 'region us-east-1')",
         "  hint: fix it (sections look like [profile NAME] or [default], then key = value lines), "
         "or point AWS_CONFIG_FILE at another file"]),
    "credentials file without the secret": (
        {"AWS_SHARED_CREDENTIALS_FILE": "{half}", "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, [],
        ["error: the AWS credentials in {half} lack aws_secret_access_key",
         "  hint: add aws_secret_access_key to that profile (`aws configure` writes both keys)"]),
}


@pytest.fixture
def aws_files(aws, tmp_path, monkeypatch):
    """A working ~/.aws (two profiles), plus a malformed config and a half credentials file."""
    files = {
        "config": tmp_path / "aws" / "config",
        "credentials": tmp_path / "aws" / "credentials",
        "broken": tmp_path / "aws" / "config-broken",
        "half": tmp_path / "aws" / "credentials-half",
    }
    files["config"].parent.mkdir()
    files["config"].write_text("[default]\nregion = us-east-1\n[profile prod]\nregion = us-east-1\n")
    files["credentials"].write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
                                    "[prod]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    files["broken"].write_text("[default]\nregion us-east-1\n")
    files["half"].write_text("[default]\naws_access_key_id = testing\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(files["config"]))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(files["credentials"]))
    # No instance-metadata probing on a developer machine: the answer must come from the files.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("LLAMAPOD_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return {name: str(path) for name, path in files.items()}


CASES = [(problem, command) for problem in PROBLEMS for command in COMMANDS
         if not PROBLEMS[problem][1] or command[0] in WITH_PROFILE_FLAG]


@pytest.mark.parametrize("problem, command", CASES, ids=[f"{p}-{c[0]}" for p, c in CASES])
def test_cloud_command_names_the_broken_aws_setting(aws_files, run_cli, monkeypatch, tmp_path, problem, command):
    env, extra_args, expected = PROBLEMS[problem]
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value.format(**aws_files))
    code, out, err = run_cli(*command, *extra_args)
    lines = [line for line in err.splitlines() if line.startswith(("error:", "  hint:"))]
    assert lines == [line.format(**aws_files) for line in expected], err
    assert code == 1 and "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "home" / "clusters").exists() or not any((tmp_path / "home" / "clusters").iterdir())


def test_cloud_setup_that_works_still_reaches_the_emulator(aws_files, run_cli):
    code, out, err = run_cli("status", "demo", "--profile", "prod")
    assert "error: AWS profile" not in err and "internal error" not in err
    assert code == 1 and "demo" in err, err
