"""A dry run that executes: the real engine with every step that could touch the world
answered by a mock (`POST /api/workflows/{name}/dry-run` with `mock`), in a throwaway
SQLite database. Nothing executes but `set` and `log` steps, so asking needs no more
than reading the workflow.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..dsl.casefile import MockSpec, mock_lists
from ..dsl.loader import Definition
from ..errors import ParamError
from .mocks import Mocks

PURE_KINDS = ("set", "log")  # what may execute in a rehearsal: they only shape data
REHEARSAL_TIMEOUT = 30.0
_MOCKS = TypeAdapter(dict[str, list[MockSpec]])


def rehearsal_mocks(definition: Definition, given: Any) -> Mocks:
    """The mocks of a rehearsal, checked: valid answers, known step ids, and every step
    other than `set` and `log` mocked (else ParamError naming them under `mock`)."""
    spec = definition.spec
    assert spec is not None
    try:
        answers = _MOCKS.validate_python(mock_lists(given))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ParamError({"mock": f"{where}: {first['msg']}"}) from None
    steps = {s.id: s for s in (*spec.steps, *spec.on_failure, *spec.on_success, *spec.finally_)}
    for step in list(steps.values()):
        if step.compensate is not None:
            steps[f"{step.id}.compensate"] = step.compensate
    unknown = sorted(set(answers) - set(steps))
    if unknown:
        raise ParamError({"mock": f"the workflow has no step {', '.join(repr(s) for s in unknown)}"})
    real = sorted(sid for sid, a in answers.items() if a[-1].real)
    if real:
        raise ParamError({"mock": f"`real: true` is not allowed in a dry run ({', '.join(real)}); nothing executes"})
    missing = [sid for sid, step in steps.items() if step.kind not in PURE_KINDS and sid not in answers]
    if missing:
        raise ParamError({"mock": f"a dry run executes nothing: mock every step that is not set or log; "
                                  f"not mocked: {', '.join(missing)}"})
    return Mocks.of(answers)


async def rehearse(definition: Definition, params: dict[str, Any], mocks: Mocks, environ: dict[str, str],
                   timeout: float = REHEARSAL_TIMEOUT) -> dict[str, Any]:
    """Run `definition` once with `mocks` in a throwaway database; its run document
    (secrets masked). Raises the engine's errors when the run may not start."""
    from ..storage.store import Store
    from .engine import Engine
    from .report import run_document

    with tempfile.TemporaryDirectory(prefix="treadle-dry-run-") as tmp:
        async with Store(f"sqlite:///{Path(tmp) / 'dry-run.db'}") as store:
            engine = Engine(store, environ=environ, role="dry-run")
            try:
                new = engine.new_run(definition, params, trigger="dry-run")
                store.put_run(new.row, (engine.owner, 1))
                exe = engine.launch(new, mocks=mocks)
                try:
                    await asyncio.wait_for(asyncio.shield(exe.wait()), timeout)
                except TimeoutError:
                    exe.cancel(f"the dry run did not finish within {timeout:g}s")
                    await exe.wait()
                await store.flush()
                doc = await run_document(store, exe.id)
            finally:
                await engine.close()
    assert doc is not None
    return doc
