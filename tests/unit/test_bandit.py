"""bandit on src/: no finding left unexamined; each skip is justified on its own line."""

from __future__ import annotations

import json
import re
import subprocess  # nosec B404: runs bandit, a fixed local module
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
# "# nosec BXXX: why" (one or more test ids, then a reason); a bare "# nosec" hides everything.
JUSTIFIED = re.compile(r"#\s*nosec\s+B\d{3}(\s*,\s*B\d{3})*\s*:\s*\S.{8,}")


def test_bandit_finds_nothing_unexamined():
    pytest.importorskip("bandit")
    done = subprocess.run([sys.executable, "-m", "bandit", "-q", "-r", str(SRC), "-f", "json"],  # nosec B603
                          capture_output=True, text=True, timeout=300)
    findings = json.loads(done.stdout)["results"]
    shown = [f"{Path(f['filename']).relative_to(SRC)}:{f['line_number']} {f['test_id']} {f['issue_text']}"
             for f in findings]
    assert shown == []


def test_every_skip_names_its_check_and_says_why():
    bare = [f"{path.relative_to(SRC)}:{number}: {line.strip()}"
            for path in sorted(SRC.rglob("*.py"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if "nosec" in line and not JUSTIFIED.search(line)]
    assert bare == []
