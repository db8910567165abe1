"""The one rule for user strings (llamapod.validate): grammars match whole strings, and no
accepted value carries a control character or looks like an option."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.hostile import hostile_text
from llamapod import validate
from llamapod.errors import ConfigError, LlamapodError

GRAMMARS = (validate.cluster_name_problem, validate.linux_user_problem, validate.login_user_problem,
            validate.host_problem, validate.region_problem, validate.aws_profile_problem,
            validate.slurm_name_problem, validate.slurm_list_problem, validate.env_name_problem,
            validate.ssh_host_alias_problem)
PATHS = (validate.path_problem, validate.sbatch_path_problem, validate.absolute_path_problem)


@settings(max_examples=150, deadline=None)
@given(hostile_text)
def test_an_accepted_name_is_one_plain_word(value):
    for check in GRAMMARS:
        if check(value) is None:
            assert not validate.has_control_characters(value), check.__name__
            assert value and not value.startswith("-"), check.__name__
            assert not re.search(r"[\s'\"\\$`;|&<>*?!%#]", value), check.__name__


@settings(max_examples=150, deadline=None)
@given(hostile_text)
def test_an_accepted_path_is_one_line_and_not_an_option(value):
    for check in PATHS:
        if check(value) is None:
            assert value and not value.startswith("-") and not validate.has_control_characters(value)
    if validate.sbatch_path_problem(value) is None:
        assert not re.search(r"[\s'\"\\#%]", value)


@pytest.mark.parametrize("check, value", [
    (validate.cluster_name_problem, "nlx\n"), (validate.linux_user_problem, "ubuntu\n"),
    (validate.login_user_problem, "ubuntu\n"), (validate.host_problem, "10.0.0.5\n"),
    (validate.region_problem, "us-east-1\n"), (validate.slurm_name_problem, "dev\n"),
    (validate.env_name_problem, "PATH\n"),
])
def test_a_trailing_newline_is_not_part_of_a_name(check, value):
    # What re.match with ^...$ got wrong: "$" also matches before a final newline.
    assert re.match(r"^[a-z0-9.-]+$", value.lower().replace("_", "-"))
    assert check(value) is not None
    assert check(value.rstrip("\n")) is None


def test_names_that_would_leave_the_state_folder_are_refused():
    for name in ("../../x", "..", "a/b", "/etc/passwd", "x.json", "", "-rf", "a" * 64, "a-", "ok\x00"):
        with pytest.raises(ConfigError) as err:
            validate.cluster_state_name(name)
        assert "\n" not in err.value.message
    assert validate.cluster_state_name("ml-4-g5-48x-cluster") == "ml-4-g5-48x-cluster"


@settings(max_examples=200, deadline=None)
@given(hostile_text, st.sampled_from([validate.require_cluster_name, validate.require_login_user,
                                      validate.require_host, validate.require_path]))
def test_require_returns_the_value_or_raises_one_config_error_line(value, require):
    try:
        assert require(value, "setting") == value
    except LlamapodError as err:
        assert isinstance(err, ConfigError)
        assert not validate.has_control_characters(err.message), err.message
        assert err.message.startswith("setting ") and err.hint


@given(st.text())
def test_control_characters_are_reported_as_escapes(value):
    for shown in validate.control_characters(value):
        assert shown.isprintable()
    assert validate.has_control_characters(value) == bool(validate.control_characters(value))


def test_shell_operand_keeps_options_away():
    assert validate.shell_operand("-rf") == "./-rf"
    assert validate.shell_operand("/fsx/-x") == "/fsx/-x"
    assert validate.shell_operand("runs") == "runs"
