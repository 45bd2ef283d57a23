"""The local executor (the default): every step executes in this process."""

from __future__ import annotations

from typing import Any


class LocalDispatcher:
    """Nothing leaves the server: `remote` is always False, so the run executes the
    step kind itself (runner/engine/run.py)."""

    name = "local"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def remote(self, kind: str, executor: str | None) -> bool:
        return False

    async def execute(self, job: Any, ctx: Any, placement_timeout: float | None = None) -> Any:  # pragma: no cover
        raise RuntimeError("the local executor executes nothing remotely")

    async def forget(self, tokens: list[str]) -> None:
        return None
