"""One rule for user strings.

Every name, user, host, path and value that can reach a shell, an ssh command line, an
sbatch script, ``~/.ssh/config``, a state path or a root-owned file on a node passes
through here: either it matches a grammar as a whole string, or it is quoted for the
place it goes. Grammars are matched with ``re.fullmatch``: ``re.match`` with ``^...$``
accepts a trailing newline, which is how a name like ``"nlx\\n"`` used to slip through.

Each grammar has a ``*_problem`` function that returns the rule a value breaks (None
when it is fine), for validators that collect every problem at once, and a ``require_*``
function that raises a one-line ``ConfigError`` naming the setting, the rule and the value.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from typing import Any, Callable, Optional

from llamapod.errors import ConfigError

# SageMaker's ClusterName and InstanceGroupName pattern (botocore model: ClusterName,
# ClusterInstanceGroupName), 1-63 characters. It is also the state file's name, so
# nothing outside it ("../x", "a/b") can name a path outside the state folder.
CLUSTER_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
CLUSTER_NAME_MAX = 63
CLUSTER_NAME_RULE = ("must be 1-63 letters, digits or hyphens, starting and ending with a letter or digit")

# useradd's default NAME_REGEX on Debian/Ubuntu (adduser.conf), 32 characters at most:
# the user llamapod creates on every node.
LINUX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
LINUX_USER_RULE = ("must be a Linux user name: a lowercase letter or _, then lowercase letters, digits, _ or - "
                   "(32 at most)")

# Users llamapod only logs in as (any Slurm head node) may come from a directory
# service, where capitals and dots are common; never '@', '%', spaces or a leading '-'.
LOGIN_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,63}")
LOGIN_USER_RULE = "must be a user name: a letter or _, then letters, digits, '.', '_' or '-' (64 at most)"

# A DNS name, an SSM target (sagemaker-cluster:<id>_<group>-<instance>) or an IPv4
# address; IPv6 literals are checked with ipaddress instead. No '@' (user separator),
# '%' (ssh expands tokens in HostName), whitespace or a leading '-' (an ssh option).
HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]{0,252}")
HOST_RULE = "must be a host name or IP address (letters, digits, '.', '-', '_' or ':'; not starting with '-')"

# AWS region codes (us-east-1, us-gov-west-1, cn-north-1).
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
REGION_RULE = "must be an AWS region code such as us-east-1"

# AWS CLI profile names as llamapod passes them to `aws --profile` inside a ProxyCommand
# and an ssh config file: no quotes, backslashes, '%' or spaces, which would need a second
# layer of quoting there.
AWS_PROFILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/@+=,-]{0,127}")
AWS_PROFILE_RULE = "must be an AWS profile name (letters, digits and _ . : / @ + = , -; not starting with '-')"

# Slurm partition, account and job names: what sbatch accepts on an #SBATCH line
# without quoting.
SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SLURM_NAME_RULE = "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
SLURM_LIST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(,[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
SLURM_LIST_RULE = "must be letters, digits, '_', '.' or '-' (several separated by ','), not starting with '-'"

# POSIX shell variable names.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_NAME_RULE = "must be an environment variable name (letters, digits and _, not starting with a digit)"

# Characters sbatch reads specially on an #SBATCH line, which it parses itself (not bash):
# whitespace ends the value, quotes and backslashes are removed, '#' starts a comment, and
# '%' is a file-name pattern (%j, %x) in --output/--error.
_SBATCH_SPECIAL = re.compile(r"[\s'\"\\#%]")

# Unicode categories no name or path may hold: control characters (newline, NUL, ESC,
# DEL, U+0085), lone surrogates (undecodable bytes; they cannot be written as UTF-8),
# and the line and paragraph separators that text tools split lines on.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def control_characters(text: str) -> list[str]:
    """The control characters in ``text``, as escapes ("\\n", "\\x00"), in order of appearance."""
    return [repr(c)[1:-1] for c in text if unicodedata.category(c) in _FORBIDDEN_CATEGORIES]


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in text)


def shown(value: Any) -> str:
    """A value as it appears in a one-line message: repr, so a newline shows as \\n; long ones cut."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...({len(value) if isinstance(value, str) else '?'} characters)"


# ---- problems (None when the value is fine) ---------------------------------------


def _grammar_problem(value: Any, grammar: re.Pattern, rule: str, max_len: int | None = None) -> Optional[str]:
    if not isinstance(value, str) or grammar.fullmatch(value) is None:
        return rule
    if max_len is not None and len(value) > max_len:
        return rule
    return None


def cluster_name_problem(value: Any) -> Optional[str]:
    return _grammar_problem(value, CLUSTER_NAME, CLUSTER_NAME_RULE, CLUSTER_NAME_MAX)


def linux_user_problem(value: Any) -> Optional[str]:
    return _grammar_problem(value, LINUX_USER, LINUX_USER_RULE)


def login_user_problem(value: Any) -> Optional[str]:
    return _grammar_problem(value, LOGIN_USER, LOGIN_USER_RULE)


def region_problem(value: Any) -> Optional[str]:
    return _grammar_problem(value, REGION, REGION_RULE)


def aws_profile_problem(value: Any) -> Optional[str]:
    return _grammar_problem(value, AWS_PROFILE, AWS_PROFILE_RULE)


def slurm_name_problem(value: Any) -> Optional[str]:
    return _grammar_problem(value, SLURM_NAME, SLURM_NAME_RULE)


def slurm_list_problem(value: Any) -> Optional[str]:
    return _grammar_problem(value, SLURM_LIST, SLURM_LIST_RULE)


def env_name_problem(value: Any) -> Optional[str]:
    return _grammar_problem(value, ENV_NAME, ENV_NAME_RULE)


def host_problem(value: Any) -> Optional[str]:
    if isinstance(value, str) and not has_control_characters(value):
        try:
            ipaddress.ip_address(value)
            return None
        except ValueError:
            pass
        if _is_shorthand_ipv4(value):
            return "must spell an IPv4 address in full, a.b.c.d without leading zeros (ssh reads it as another address)"
    return _grammar_problem(value, HOST, HOST_RULE)


def _is_shorthand_ipv4(value: str) -> bool:
    # inet_aton reads "0", "10.1", "0x7f.1" and "010.0.0.1" (octal) as addresses, and so
    # does ssh (it rewrites them to the canonical form): a name like that means another host.
    try:
        socket.inet_aton(value)
    except (OSError, ValueError):
        return False
    return True


def text_problem(value: Any) -> Optional[str]:
    """Free text that lands on one line (a comment, a log line, an argument): no control characters."""
    if not isinstance(value, str):
        return "must be a string"
    bad = control_characters(value)
    if bad:
        return f"must not contain control characters such as newlines (found {bad[0]})"
    return None


def quoted_value_problem(value: Any) -> Optional[str]:
    """A value that is quoted for a shell script: anything a UTF-8 text file and bash can hold."""
    if not isinstance(value, str):
        return "must be a string"
    if "\x00" in value:
        return "must not contain NUL characters (a command line cannot hold them)"
    if any(unicodedata.category(c) == "Cs" for c in value):
        return "must be valid text (it holds an undecodable byte)"
    return None


def path_problem(value: Any) -> Optional[str]:
    """A path a command receives as an argument: not empty, one line, not option-like."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty path"
    problem = text_problem(value)
    if problem:
        return problem
    if value.startswith("-"):
        return "must not start with '-' (a command would read it as an option; write ./-name)"
    return None


def sbatch_path_problem(value: Any) -> Optional[str]:
    """A path written on an #SBATCH line, which sbatch parses without bash's quoting."""
    problem = path_problem(value)
    if problem:
        return problem
    if _SBATCH_SPECIAL.search(value):
        return "must not contain spaces, quotes, backslashes, '#' or '%' (sbatch reads #SBATCH lines itself)"
    return None


def absolute_path_problem(value: Any) -> Optional[str]:
    problem = sbatch_path_problem(value)
    if problem:
        return problem
    if not value.startswith("/"):
        return "must be an absolute path (starting with /)"
    return None


# ---- require_*: raise one ConfigError ---------------------------------------------


def require(problem: Optional[str], value: Any, where: str, hint: str) -> None:
    """Raise ``ConfigError("<where> <rule> (got <value>)", hint)`` when ``problem`` is set."""
    if problem:
        raise ConfigError(f"{where} {problem} (got {shown(value)})", hint)


def _requirer(check: Callable[[Any], Optional[str]], default_hint: str) -> Callable[..., str]:
    def _require(value: Any, where: str, hint: str = default_hint) -> str:
        require(check(value), value, where, hint)
        return value

    _require.__doc__ = f"``value`` unchanged when {check.__name__} finds nothing, else a ConfigError."
    return _require


require_cluster_name = _requirer(cluster_name_problem,
                                 "use the cluster's name as `llamapod status` shows it, e.g. ml-4-g5-48x-cluster")
require_login_user = _requirer(login_user_problem, "set remote.user to the account you log in as, e.g. ubuntu")
require_host = _requirer(host_problem, "set remote.host to a host name or IP address, e.g. 10.0.0.5")
require_path = _requirer(path_problem, "use a plain path on one line; prefix a name starting with '-' with ./")


def cluster_state_name(name: Any) -> str:
    """``name`` when it may name files in the state folder (it is a valid cluster name)."""
    return require_cluster_name(name, "cluster name",
                                "name a cluster as `llamapod status` or llamapod.toml's [cluster] name shows it")


# ---- quoting for a destination -----------------------------------------------------


def shell_operand(path: str) -> str:
    """``path`` as a command's operand: a leading '-' gets './' so no command takes it for an option."""
    return f"./{path}" if path.startswith("-") else path


# ssh_config(5), OpenSSH 9: options whose values are expanded for %-tokens, and those
# that also expand ${ENV} (which has no escape, so such a value cannot hold "${").
_SSH_PERCENT_KEYS = frozenset(k.lower() for k in (
    "CertificateFile", "ControlPath", "IdentityAgent", "IdentityFile", "KnownHostsCommand", "LocalCommand",
    "RemoteCommand", "RevokedHostKeys", "UserKnownHostsFile", "HostName"))
_SSH_DOLLAR_KEYS = frozenset(k.lower() for k in (
    "CertificateFile", "ControlPath", "IdentityAgent", "IdentityFile", "KnownHostsCommand", "RevokedHostKeys",
    "UserKnownHostsFile"))
# ssh_config(5): "ProxyCommand accepts the tokens %%, %h, %n, %p, and %r."
_PROXY_TOKENS = re.compile(r"%(?![%hnpr])")
_SSH_NEEDS_QUOTES = re.compile(r"[\s\"'\\#=]")


def ssh_config_value(key: str, value: str) -> str:
    """``value`` written so that ssh reads back exactly ``value`` for option ``key``.

    OpenSSH splits an option's value like a command line (misc.c ``argv_split``):
    whitespace separates words, '#' at the start of a word starts a comment, single and
    double quotes group, and a backslash escapes a quote or a backslash. ``ProxyCommand``
    is the exception: the rest of the line is the command, as written (its quotes must
    still balance). Percent tokens (%h, %p, ...) are expanded in path-like options, so a
    literal '%' there is written '%%'. Newlines cannot be written at all.
    """
    if not value:
        raise ConfigError(f"ssh option {key} needs a value (ssh refuses an empty one)", "set a value or leave it out")
    if has_control_characters(value):
        raise ConfigError(f"ssh option {key} cannot hold {shown(value)}: it contains a control character",
                          "remove newlines and other control characters from the value")
    lowered = key.lower()
    if lowered == "proxycommand":
        return _proxy_command_value(value)
    if lowered in _SSH_DOLLAR_KEYS and "${" in value:
        raise ConfigError(f"ssh option {key} cannot hold {shown(value)}: ssh would expand '${{' as a variable",
                          "use a path without '${'")
    if lowered in _SSH_DOLLAR_KEYS and value.startswith("~"):
        # The same options expand a leading '~' to a home folder; a relative path that
        # merely starts with '~' keeps its meaning as ./~...
        value = f"./{value}"
    if lowered in _SSH_PERCENT_KEYS:
        value = value.replace("%", "%%")
    if not _SSH_NEEDS_QUOTES.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _proxy_command_value(value: str) -> str:
    # ssh strips the line's trailing blanks and skips blanks and '=' before the command.
    if value != value.strip(" \t") or value.startswith("="):
        raise ConfigError(f"ssh ProxyCommand {shown(value)} starts or ends with a blank or starts with '='",
                          "write the command without surrounding blanks")
    if _PROXY_TOKENS.search(value):
        raise ConfigError(f"ssh ProxyCommand {shown(value)} holds a '%' that is not one of %%, %h, %n, %p, %r",
                          "write a literal percent sign as %%")
    if not ssh_quotes_balance(value):
        raise ConfigError(f"ssh ProxyCommand {shown(value)} has unbalanced quotes as ssh reads them",
                          "avoid backslashes before quotes in the command's arguments")
    return value


def ssh_quotes_balance(text: str) -> bool:
    """Whether OpenSSH's ``argv_split`` finds every quote in ``text`` closed."""
    quote = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "'\"\\":
            i += 2
            continue
        if not quote and char in "'\"":
            quote = char
        elif quote and char == quote:
            quote = ""
        i += 1
    return not quote


def ssh_host_alias_problem(value: Any) -> Optional[str]:
    """A name on a ``Host`` line: one word with none of ssh's pattern characters (* ? ! ,)."""
    return _grammar_problem(value, re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*"),
                            "must be letters, digits, '.', '_' or '-', not starting with '-'")
