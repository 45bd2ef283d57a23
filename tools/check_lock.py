"""Is requirements/lock.txt current with pyproject.toml?

Two checks, each with a message saying how to fix it:
1. every requirement of the project and of each of its extras is pinned in the lock
   at a version the requirement allows (this names the requirement that broke);
2. the lock records a digest of the dependency lists it was made from, so any change
   to them (a new bound, an added package, an extra) without a refresh is caught even
   when the old pins happen to satisfy it.

`python tools/check_lock.py` exits 0 when current, 1 with the reasons otherwise;
`--stamp` writes the digest into the lock (tools/lock does that after compiling).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a fresh machine before the lock is installed: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements" / "lock.txt"
REFRESH = "refresh it with `tools/lock` (see requirements/README.md)"
_DIGEST_LINE = "# pyproject-dependencies-sha256: "
# the platform the lock is made for (tools/lock passes the same to uv)
_ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
                "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def requirements(pyproject: dict) -> dict[str, list[str]]:
    """The dependency lists: the project's own and one per extra."""
    project = pyproject["project"]
    lists = {"dependencies": list(project.get("dependencies", []))}
    for extra, reqs in sorted(project.get("optional-dependencies", {}).items()):
        lists[f"extra '{extra}'"] = list(reqs)
    return lists


def digest(lists: dict[str, list[str]]) -> str:
    normal = {k: sorted(str(Requirement(r)) for r in v) for k, v in lists.items()}
    return hashlib.sha256(json.dumps(normal, sort_keys=True).encode()).hexdigest()


def pins(lock_text: str) -> dict[str, str]:
    """name -> pinned version, from `name==version` lines."""
    found = {}
    for line in lock_text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            found[canonicalize_name(m.group(1))] = m.group(2)
    return found


def problems(pyproject_text: str, lock_text: str) -> list[str]:
    lists = requirements(tomllib.loads(pyproject_text))
    pinned = pins(lock_text)
    out = []
    for where, reqs in lists.items():
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({**_ENVIRONMENT, "extra": ""}):
                continue
            name = canonicalize_name(req.name)
            if name == "treadle":
                continue
            version = pinned.get(name)
            if version is None:
                out.append(f"pyproject.toml {where}: '{text}' is not in requirements/lock.txt; {REFRESH}")
            elif not req.specifier.contains(version, prereleases=True):
                out.append(f"pyproject.toml {where}: '{text}' is not satisfied by the locked "
                           f"{req.name}=={version}; {REFRESH}")
    recorded = next((line.removeprefix(_DIGEST_LINE).strip() for line in lock_text.splitlines()
                     if line.startswith(_DIGEST_LINE)), None)
    if recorded != digest(lists):
        out.append("requirements/lock.txt was made from other dependency lists than pyproject.toml's "
                   f"(a dependency or an extra changed since); {REFRESH}")
    return out


def stamp() -> None:
    text = LOCK.read_text()
    lines = [line for line in text.splitlines() if not line.startswith(_DIGEST_LINE)]
    header = [
        "# The locked set of every package Treadle and its tests install (Python 3.11, Linux x86_64).",
        "# Made by tools/lock from pyproject.toml; do not edit by hand.",
        _DIGEST_LINE + digest(requirements(tomllib.loads(PYPROJECT.read_text()))),
    ]
    lines = [line for line in lines if line not in header[:2]]
    LOCK.write_text("\n".join(header + lines) + "\n")


def main(argv: list[str]) -> int:
    if "--stamp" in argv:
        stamp()
    if not LOCK.exists():
        print(f"tools/check_lock.py: {LOCK.relative_to(ROOT)} is missing; {REFRESH}", file=sys.stderr)
        return 1
    found = problems(PYPROJECT.read_text(), LOCK.read_text())
    for line in found:
        print(f"tools/check_lock.py: {line}", file=sys.stderr)
    if not found:
        print("requirements/lock.txt is current with pyproject.toml")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
