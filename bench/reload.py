"""Hot reload: save -> new version visible in the API; startup load of big folders.

    python bench/reload.py

Prints one line per figure with its target. The server is a real uvicorn with the
real watcher on a temp folder; each save writes the file the way editors do
(write a temp file, rename it over the old one) and the time runs until
`GET /api/workflows/{name}` reports the new content hash.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from runner.dsl.loader import load_file, version_of  # noqa: E402
from runner.gitops.catalog import Catalog  # noqa: E402
from tests.web_server import running_server  # noqa: E402


def line(name: str, value: str, target: str, ok: bool | None = None) -> None:
    mark = "" if ok is None else ("  OK" if ok else "  MISSED")
    print(f"{name:<46} {value:>14}   target {target}{mark}", flush=True)


def save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def workflow_text(i: int) -> str:
    return f"name: edited\nsteps:\n  - id: a\n    log: 'edit number {i}'\n  - id: b\n    run: echo {i}\n"


def edit_latency(edits: int = 50) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="treadle-reload-"))
    defs = root / "definitions"
    defs.mkdir()
    target = defs / "edited.yaml"
    save(target, workflow_text(0))
    for i in range(20):  # some neighbours, so the catalog is not trivially small
        (defs / f"other{i}.yaml").write_text(f"steps:\n  - id: s\n    log: other {i}\n")
    out = []
    with running_server(defs, f"sqlite:///{root / 'bench.db'}") as base, httpx.Client(base_url=base) as client:
        for i in range(1, edits + 1):
            text = workflow_text(i)
            want = version_of(text)
            t0 = time.perf_counter()
            save(target, text)
            while True:
                if client.get("/api/workflows/edited").json().get("version") == want:
                    break
                if time.perf_counter() - t0 > 10:
                    raise SystemExit(f"edit {i} not visible after 10 s")
                time.sleep(0.002)
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
    return out


def startup_many(n: int = 1000) -> float:
    defs = Path(tempfile.mkdtemp(prefix="treadle-many-"))
    for i in range(n):
        folder = defs / f"team{i % 10}"
        folder.mkdir(exist_ok=True)
        (folder / f"wf{i}.yaml").write_text(
            f"name: wf{i}\ndescription: workflow {i}\nparams:\n  n: {{type: integer, default: {i}}}\n"
            "steps:\n  - id: fetch\n    run: echo '{{ params.n }}'\n"
            "  - id: shape\n    set: {value: '{{ steps.fetch.output }}'}\n"
            "  - id: report\n    log: 'done {{ steps.shape.output.value }}'\n"
        )
    t0 = time.perf_counter()
    catalog = Catalog(defs)
    catalog.load_all()
    elapsed = time.perf_counter() - t0
    assert len(catalog.entries()) == n and not catalog.problems(), catalog.problems()[:3]
    return elapsed


def one_big(n: int = 10_000) -> float:
    path = Path(tempfile.mkdtemp(prefix="treadle-big-")) / "big.yaml"
    steps = "".join(
        f"  - id: s{i}\n    set: {{v: '{{{{ steps.s{i - 1}.output.v }}}}'}}\n" if i else "  - id: s0\n    set: {v: 1}\n"
        for i in range(n)
    )
    path.write_text(f"name: big\nsteps:\n{steps}")
    t0 = time.perf_counter()
    definition = load_file(path)
    elapsed = time.perf_counter() - t0
    assert definition.valid, definition.problems[:3]
    return elapsed


def main() -> None:
    print("Treadle reload benchmark")
    lat = sorted(edit_latency())
    p50, p95 = statistics.median(lat), lat[int(len(lat) * 0.95) - 1]
    line("save -> new version in API, p50 (50 edits)", f"{p50:.0f} ms", "< 100 ms", p50 < 100)
    line("save -> new version in API, p95", f"{p95:.0f} ms", "< 250 ms", p95 < 250)
    many = startup_many()
    line("startup load of 1,000 definition files", f"{many:.2f} s", "< 2 s", many < 2)
    big = one_big()
    line("load of one 10,000-step definition", f"{big:.2f} s", "< 1 s", big < 1)


if __name__ == "__main__":
    main()
