"""`http`: one HTTP request through the engine's shared httpx client."""

from __future__ import annotations

import json
from typing import Any

import httpx

from ..errors import StepFailed
from ..limits import MAX_HTTP_RESPONSE_BYTES, MAX_HTTP_TEXT_CHARS, size_text
from .base import StepContext, StepOutcome

try:  # the W3C traceparent of the current span, when OpenTelemetry is installed
    from opentelemetry.propagate import inject as _inject
except ImportError:  # pragma: no cover - the `otel` extra is not installed
    _inject = None

name = "http"
# `circuit_breaker` is a step key: the workflow's default is copied into each http step at load
fields = ("http", "circuit_breaker")
TEXT_LIMIT = MAX_HTTP_TEXT_CHARS  # characters of the body kept as `output.text`; see runner/limits.py
DEFAULT_TIMEOUT = 30.0


def _strings(mapping: dict[str, Any] | None) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (mapping or {}).items()}


def _ascii_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers travel as ASCII: say which one is not, and how to send it, instead of a
    bare UnicodeEncodeError from deep in httpx."""
    for name, value in headers.items():
        for part, text in (("name", name), ("value", value)):
            bad = next((i for i, ch in enumerate(text) if ord(ch) > 127), None)
            if bad is not None:
                raise StepFailed(
                    f"header '{name}': its {part} has a character outside ASCII ({text[bad]!r} at position {bad + 1}); "
                    f"HTTP headers are ASCII: percent-encode it ({{{{ value | urlencode }}}}) or send it in the body",
                    retryable=False)
    return headers


async def execute(ctx: StepContext, inp: dict[str, Any]) -> StepOutcome:
    spec = inp["http"]
    method, url = spec.get("method", "GET"), str(spec["url"])
    headers = _ascii_headers(_strings(spec.get("headers")))
    if not any(k.lower() == "idempotency-key" for k in headers):
        headers["Idempotency-Key"] = ctx.idempotency_key
    if _inject is not None and not any(k.lower() == "traceparent" for k in headers):
        _inject(headers)  # with tracing on: this attempt's span (engine/tracing.py); else nothing
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
    # `params` are added to the URL's own query string (httpx would replace it)
    try:
        target = httpx.URL(url).copy_merge_params(query) if query else url
    except httpx.InvalidURL as exc:
        raise StepFailed(f"invalid URL '{url}': {exc}", retryable=False) from None
    response, content = await _send(ctx, method, url, target, timeout, kwargs)
    text = content.decode(response.encoding or "utf-8", "replace")
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT] + f"\n[treadle: body truncated at {TEXT_LIMIT} characters]"
    try:
        body_json = json.loads(content) if content else None
    except ValueError:
        body_json = None
    output = {"status": response.status_code, "headers": dict(response.headers), "json": body_json, "text": text}
    ctx.log(f"{method} {url} -> {response.status_code} ({len(content)} bytes)\n")
    expected = spec.get("expect_status")
    ok = response.status_code in expected if expected else 200 <= response.status_code < 300
    if not ok:
        want = ", ".join(map(str, expected)) if expected else "2xx"
        snippet = f": {text.strip()[:200]}" if text.strip() else ""
        raise StepFailed(
            f"{method} {url} answered {response.status_code}, expected {want}{snippet}",
            http_status=response.status_code, output=output, host_error=_host_error(method, url, response),
        )
    return StepOutcome(output=output, http_status=response.status_code, host_answered=True)


def _host_error(method: str, url: str, response: httpx.Response) -> str | None:
    """5xx and 429 are the host's fault; any other answer (4xx included) shows it is up."""
    if response.status_code >= 500 or response.status_code == 429:
        return f"{method} {url} answered {response.status_code}"
    return None


class _TooBig(Exception):
    pass


async def _read(response: httpx.Response) -> bytes:
    """The body (decoded from gzip & co), read as it comes; _TooBig past the limit, so a
    server sending gigabytes costs at most MAX_HTTP_RESPONSE_BYTES of memory."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_HTTP_RESPONSE_BYTES:
            raise _TooBig
        chunks.append(chunk)
    return b"".join(chunks)


async def _send(ctx: StepContext, method: str, url: str, target: str | httpx.URL, timeout: float,
                kwargs: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    """The request and its body; a failure to get an answer names the host's fault."""
    failure: str | None = None
    too_big = False
    try:
        response = await ctx.http.send(ctx.http.build_request(method, target, **kwargs), stream=True)
        try:
            content = await _read(response)
        except _TooBig:
            too_big = True
        finally:
            await response.aclose()
    except httpx.InvalidURL as exc:
        raise StepFailed(f"invalid URL '{url}': {exc}", retryable=False) from None
    except httpx.UnsupportedProtocol:
        raise StepFailed(f"invalid URL '{url}': use http:// or https://", retryable=False) from None
    except httpx.ConnectTimeout:
        failure = f"{method} {url}: no connection within {timeout:g}s"
    except httpx.ConnectError as exc:
        failure = f"{method} {url}: cannot connect ({_reason(exc)})"
    except httpx.TimeoutException:
        failure = f"{method} {url}: no answer within {timeout:g}s"
    except httpx.LocalProtocolError as exc:  # a bad header of ours: no verdict on the host
        raise StepFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from None
    except httpx.HTTPError as exc:
        failure = f"{method} {url}: {type(exc).__name__}: {exc}"
    if failure is not None:
        raise StepFailed(failure, host_error=failure)
    if too_big:
        raise StepFailed(
            f"{method} {url} answered {response.status_code} with a body of more than "
            f"{size_text(MAX_HTTP_RESPONSE_BYTES)}, the limit for an http step; download big files with a "
            "`run` step (e.g. curl -fsSo file URL) and pass the file's path",
            # the same body will come again; an error status may not
            http_status=response.status_code, retryable=response.status_code >= 500 or response.status_code == 429,
            host_error=_host_error(method, url, response),
        )
    return response, content


def _reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the OSError saying what really happened
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__
