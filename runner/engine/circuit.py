"""Circuit breakers for `http` steps: one per target host (or per `key`: several hosts or
paths of one service share it), shared by every run of an engine.

    closed --(`failures` failures in a row)--> open --(`reset_after`)--> half_open
    half_open --(a trial call succeeds)--> closed
    half_open --(a trial call fails)-----> open (the wait starts again)

A failure is a connection error, a timeout or an answer 5xx / 429; any other answer
(4xx included) shows the host is up and counts as a success. While open, calls are
refused at once; half-open lets at most `half_open_max` trial calls through at a time.

Everything runs on the engine's event loop, so there are no locks. Transitions use
the monotonic clock; `opened_at` (shown to users) is wall-clock time.

A breaker is shared by the runs of every workflow calling its host, so what it keeps
is masked with the secrets of the run that brought it (a URL, an error text), and it
remembers the namespaces of those workflows: a token of another namespace never sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

from ..dsl.durations import format_duration
from ..errors import (
    CircuitOpen,
    StepFailed,
)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    failures: int = 5
    reset_after: float = 30.0
    half_open_max: int = 1

    @classmethod
    def of(cls, value: dict[str, Any]) -> BreakerSettings:
        """From a step's `circuit_breaker` mapping (as validated by the definition)."""
        return cls(**{k: value[k] for k in ("failures", "reset_after", "half_open_max") if k in value})


def host_of(url: str | httpx.URL) -> str | None:
    """`scheme://host:port` of an http(s) URL (default ports filled in), None if there is none."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    scheme, host = parsed.scheme.lower(), parsed.host.lower()
    if scheme not in ("http", "https") or not host:
        return None
    port = parsed.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass
class Permit:
    """One call let through by a breaker; settle it exactly once (later calls are no-ops)."""

    breaker: Breaker
    trial: bool
    generation: int
    settled: bool = False
    call: str = ""  # `METHOD url`, for the messages
    mask: Callable[[str], str] = str  # the calling run's masker: a breaker keeps no secret in clear

    def succeeded(self) -> None:
        if not self.settled:
            self.settled = True
            self.breaker._settle(self, None)

    def failed(self, error: str) -> None:
        if not self.settled:
            self.settled = True
            self.breaker._settle(self, self.mask(error))

    def release(self) -> None:
        """No outcome (cancelled, invalid request): only frees a trial slot."""
        if not self.settled:
            self.settled = True
            self.breaker._settle(self, None, counted=False)


@dataclass
class Breaker:
    host: str  # `scheme://host:port`, or the key of a keyed breaker
    settings: BreakerSettings
    key: str | None = None  # `circuit_breaker.key`: the steps naming it share this breaker, whatever their host
    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    failures: int = 0
    successes: int = 0
    rejected: int = 0  # calls refused while open or half-open and busy
    opened_at: float | None = None  # wall clock
    last_error: str | None = None  # masked by the run that recorded it
    label: str = ""  # the host as shown: masked (a secret can sit in a host name)
    namespaces: set[str] = field(default_factory=set)  # of the workflows whose runs called it
    _opened_mono: float = 0.0
    _trials: int = 0  # trial calls in flight
    _generation: int = 0  # bumped on every transition: late trial outcomes of an old episode are ignored

    def _refresh(self) -> None:
        if self.state is CircuitState.OPEN and time.monotonic() - self._opened_mono >= self.settings.reset_after:
            self._move(CircuitState.HALF_OPEN)

    def _move(self, state: CircuitState) -> None:
        self.state = state
        self._generation += 1
        self._trials = 0
        if state is CircuitState.OPEN:
            self._opened_mono, self.opened_at = time.monotonic(), time.time()
        elif state is CircuitState.CLOSED:
            self.opened_at = None
            self.consecutive_failures = 0

    def current_state(self) -> CircuitState:
        self._refresh()
        return self.state

    def next_trial_in(self) -> float | None:
        """Seconds until the breaker lets a trial call through; None unless open."""
        if self.current_state() is not CircuitState.OPEN:
            return None
        return max(0.0, self._opened_mono + self.settings.reset_after - time.monotonic())

    def admit(self, settings: BreakerSettings | None = None) -> Permit:
        """Let one call through, or raise CircuitOpen. `settings`: those of the calling step
        (when workflows configure one host differently, the latest call's settings apply)."""
        if settings is not None:
            self.settings = settings
        self._refresh()
        if self.state is CircuitState.CLOSED:
            return Permit(self, trial=False, generation=self._generation)
        if self.state is CircuitState.HALF_OPEN and self._trials < self.settings.half_open_max:
            self._trials += 1
            return Permit(self, trial=True, generation=self._generation)
        self.rejected += 1
        raise CircuitOpen(self.refusal(), retryable=True)

    def refusal(self) -> str:
        last = f"last: {self.last_error}" if self.last_error else "no error recorded"
        n = self.consecutive_failures
        failures = f"{n} failure{'' if n == 1 else 's'}"
        wait = self.next_trial_in()
        if wait is not None:
            return f"circuit open for {self.host} after {failures} ({last}); next trial in {format_duration(wait)}"
        return (f"circuit half_open for {self.host} after {failures} ({last}); {self._trials} trial call"
                f"{'' if self._trials == 1 else 's'} in progress, no more let through until one ends")

    def _settle(self, permit: Permit, error: str | None, *, counted: bool = True) -> None:
        current = permit.generation == self._generation
        if permit.trial and current:
            self._trials -= 1
        if not counted:
            return
        if error is None:
            self.successes += 1
        else:
            self.failures += 1
            self.last_error = error
        self._refresh()
        if not current:
            return  # admitted before the last transition: older news than what caused it
        if self.state is CircuitState.CLOSED:
            self.consecutive_failures = 0 if error is None else self.consecutive_failures + 1
            if self.consecutive_failures >= self.settings.failures:
                self._move(CircuitState.OPEN)
        elif permit.trial:  # half_open: the trial decides
            if error is None:
                self._move(CircuitState.CLOSED)
            else:
                self.consecutive_failures += 1
                self._move(CircuitState.OPEN)

    def reset(self) -> None:
        """Close the circuit now; totals stay, the run of failures starts again from 0."""
        self._move(CircuitState.CLOSED)

    def snapshot(self) -> dict[str, Any]:
        """The breaker as data (times are wall-clock seconds)."""
        wait = self.next_trial_in()
        return {
            "host": self.label or self.host, "key": self.key, "state": self.current_state().value,
            "consecutive_failures": self.consecutive_failures, "failures": self.failures,
            "successes": self.successes, "rejected": self.rejected, "trials_in_flight": self._trials,
            "opened_at": self.opened_at, "next_trial_at": time.time() + wait if wait is not None else None,
            "last_error": self.last_error,
            "settings": {"failures": self.settings.failures, "reset_after": self.settings.reset_after,
                         "half_open_max": self.settings.half_open_max},
        }


class Breakers:
    """The engine's breakers by host (`scheme://host:port`); a host gets one on its first call."""

    def __init__(self) -> None:
        self._by_host: dict[str, Breaker] = {}

    def for_host(self, host: str, settings: BreakerSettings, *, mask: Callable[[str], str] = str,
                 namespace: str | None = None, key: str | None = None) -> Breaker:
        """The breaker of `host`, or the one of `key` (kept apart from hosts: a key never
        has `://`)."""
        name = key if key is not None else host
        breaker = self._by_host.get(name)
        if breaker is None:
            breaker = self._by_host[name] = Breaker(name, settings, key=key, label=name if key else mask(host))
        if namespace is not None:
            breaker.namespaces.add(namespace)
        return breaker

    def admit(self, url: str | httpx.URL, settings: BreakerSettings, *, mask: Callable[[str], str] = str,
              namespace: str | None = None, key: str | None = None) -> Permit | None:
        """A permit for a call to `url`, None when the URL has no http(s) host (the call
        then fails on its own); raises CircuitOpen while the host's circuit is open.
        `mask`: the calling run's masker; `namespace`: that of its workflow."""
        host = host_of(url)
        if host is None:
            return None
        permit = self.for_host(host, settings, mask=mask, namespace=namespace, key=key).admit(settings)
        permit.mask = mask
        return permit

    def all(self, namespace: str | None = None) -> list[Breaker]:
        """Every breaker; with `namespace`, only those its workflows called."""
        return sorted((b for b in self._by_host.values() if namespace is None or namespace in b.namespaces),
                      key=lambda b: b.host)

    def find(self, name: str, namespace: str | None = None) -> list[Breaker]:
        """Breakers named by their key, `scheme://host:port`, a URL on that host, or a plain
        `host:port`; with `namespace`, only those its workflows called."""
        name = name.strip()
        shown = self.all(namespace)
        keyed = [b for b in shown if b.key is not None and b.key == name]
        if keyed:
            return keyed
        shown = [b for b in shown if b.key is None]
        if "://" in name:
            host = host_of(name)
            return [b for b in shown if b.host == host]
        plain = host_of(f"http://{name}")  # normalised: lower case, [v6], default port 80
        return [b for b in shown if plain is not None and b.host.split("://", 1)[1] == plain.split("://", 1)[1]]


def admit_call(breakers: Breakers, inp: dict[str, Any], *, mask: Callable[[str], str] = str,
               namespace: str | None = None) -> Permit | None:
    """A permit for the call of an http step with a `circuit_breaker` (None for other
    steps, or a URL without an http(s) host); raises CircuitOpen while its host's
    circuit is open. The run driver asks before the step executes, wherever it runs.
    `mask`: the run's masker (what the breaker keeps is masked); `namespace`: that of
    the run's workflow (who may see the breaker)."""
    settings, http = inp.get("circuit_breaker"), inp.get("http")
    if not settings or not isinstance(http, dict):
        return None
    url = str(http.get("url", ""))
    permit = breakers.admit(url, BreakerSettings.of(settings), mask=mask, namespace=namespace,
                            key=settings.get("key"))
    if permit is not None:
        permit.call = f"{http.get('method', 'GET')} {url}"
    return permit


def settle(permit: Permit | None, *, outcome: Any = None, error: StepFailed | None = None,
           timed_out: float | None = None) -> None:
    """Tell the breaker what the call said of its host: a failure (no connection, no
    answer, 5xx, 429), a success (any other answer), or nothing (cancelled, a request
    that never left)."""
    if permit is None:
        return
    if timed_out is not None:
        permit.failed(f"{permit.call}: no answer within the step's timeout ({timed_out:g}s)")
    elif error is not None and error.host_error is not None:
        permit.failed(error.host_error)
    elif (error is not None and error.http_status is not None) or getattr(outcome, "host_answered", False):
        permit.succeeded()
    else:
        permit.release()
