"""`http`: one HTTP request through the engine's shared httpx client."""

from __future__ import annotations

import json
from typing import Any

import httpx

from ..errors import StepFailed
from .base import StepContext, StepOutcome

name = "http"
fields = ("http",)
TEXT_LIMIT = 1_000_000
DEFAULT_TIMEOUT = 30.0


def _strings(mapping: dict[str, Any] | None) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (mapping or {}).items()}


async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
    spec = inp["http"]
    method, url = spec.get("method", "GET"), str(spec["url"])
    headers = _strings(spec.get("headers"))
    if not any(k.lower() == "idempotency-key" for k in headers):
        headers["Idempotency-Key"] = ctx.idempotency_key
    query = _strings(spec.get("params"))
    timeout = spec.get("timeout") or ctx.timeout or DEFAULT_TIMEOUT
    kwargs: dict[str, Any] = {"headers": headers, "timeout": timeout}
    if spec.get("json") is not None:
        kwargs["json"] = spec["json"]
    elif spec.get("body") is not None:
        body = spec["body"]
        kwargs["content"] = (body if isinstance(body, str) else json.dumps(body)).encode()
    elif spec.get("form") is not None:
        kwargs["data"] = _strings(spec["form"])
    try:
        # `params` are added to the URL's own query string (httpx would replace it)
        target = httpx.URL(url).copy_merge_params(query) if query else url
        response = await ctx.http.request(method, target, **kwargs)
    except httpx.InvalidURL as exc:
        raise StepFailed(f"invalid URL '{url}': {exc}", retryable=False) from None
    except httpx.UnsupportedProtocol:
        raise StepFailed(f"invalid URL '{url}': use http:// or https://", retryable=False) from None
    except httpx.ConnectTimeout:
        raise StepFailed(f"{method} {url}: no connection within {timeout:g}s") from None
    except httpx.ConnectError as exc:
        raise StepFailed(f"{method} {url}: cannot connect ({_reason(exc)})") from None
    except httpx.TimeoutException:
        raise StepFailed(f"{method} {url}: no answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise StepFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from None
    text = response.text
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT] + f"\n[treadle: body truncated at {TEXT_LIMIT} characters]"
    try:
        body_json = response.json() if response.content else None
    except ValueError:
        body_json = None
    output = {"status": response.status_code, "headers": dict(response.headers), "json": body_json, "text": text}
    ctx.log(f"{method} {url} -> {response.status_code} ({len(response.content)} bytes)\n")
    expected = spec.get("expect_status")
    ok = response.status_code in expected if expected else 200 <= response.status_code < 300
    if not ok:
        want = ", ".join(map(str, expected)) if expected else "2xx"
        snippet = f": {text.strip()[:200]}" if text.strip() else ""
        raise StepFailed(
            f"{method} {url} answered {response.status_code}, expected {want}{snippet}",
            http_status=response.status_code, output=output,
        )
    return StepOutcome(output=output, http_status=response.status_code)


def _reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the OSError saying what really happened
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__
