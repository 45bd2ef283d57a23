"""The SPEC's JSON error form, shared by the exception handlers and the auth middleware."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def error_body(path: str, detail: str, code: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"detail": detail, "error_code": code, "path": path,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"), **(extra or {})}
