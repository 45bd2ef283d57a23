"""requirements/lock.txt must be current with pyproject.toml (tools/check_lock.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_lock", ROOT / "tools" / "check_lock.py")
check_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lock)

PYPROJECT = (ROOT / "pyproject.toml").read_text()
LOCK = (ROOT / "requirements" / "lock.txt").read_text()


def test_the_lock_is_current():
    assert check_lock.problems(PYPROJECT, LOCK) == []


def test_the_command_says_so_and_exits_0():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "check_lock.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "current" in done.stdout


def test_a_bound_the_lock_does_not_satisfy_is_named():
    locked = check_lock.pins(LOCK)["pytest"]
    changed = PYPROJECT.replace('"pytest>=8,<9"', f'"pytest>{locked}"')
    assert changed != PYPROJECT
    found = check_lock.problems(changed, LOCK)
    assert any(f"'pytest>{locked}' is not satisfied by the locked pytest=={locked}" in p for p in found), found
    assert all("tools/lock" in p for p in found)


def test_a_new_dependency_missing_from_the_lock_is_named():
    changed = PYPROJECT.replace('"pyyaml>=6.0",', '"pyyaml>=6.0",\n    "no-such-package-xyz>=1",')
    found = check_lock.problems(changed, LOCK)
    assert any("'no-such-package-xyz>=1' is not in requirements/lock.txt" in p for p in found), found


def test_any_change_to_the_lists_is_caught_even_when_the_pins_still_fit():
    # a looser bound is still satisfied by every pin, but the lock was not made from it
    changed = PYPROJECT.replace('"networkx>=3.2",', '"networkx>=3.1",')
    assert changed != PYPROJECT
    found = check_lock.problems(changed, LOCK)
    assert len(found) == 1 and "other dependency lists" in found[0], found


def test_a_lock_that_lost_a_pin_is_caught():
    lines = [line for line in LOCK.splitlines() if not line.startswith("httpx==")]
    found = check_lock.problems(PYPROJECT, "\n".join(lines))
    assert any("'httpx" in p and "not in requirements/lock.txt" in p for p in found), found
