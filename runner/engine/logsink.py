"""A step's log: streamed to the store in small batches, bounded with a clear marker.

Text arrives as the step produces it and is written every `interval` seconds (so a
chatty command makes a few rows, not one per line, and a reader following the log
sees it within a fraction of a second). Past `limit` bytes per step the middle is
dropped: the head and the last `tail` bytes are kept, with a marker saying how much
was left out.

Secrets are masked in every write, and never split between two writes: the end of
a stream that could be the beginning of a secret (in any form the Masker knows,
line breaks inside it included) waits for the next write. Where truncation cuts
the text, a piece of a secret on either side of the cut is masked too.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..limits import LOG_TAIL_BYTES, MAX_LOG_BYTES

if TYPE_CHECKING:
    from ..templates import Masker

DEFAULT_LIMIT = MAX_LOG_BYTES  # see runner/limits.py


class LogSink:
    def __init__(
        self, emit: Callable[[dict[str, Any]], None], key: dict[str, Any],
        mask: Callable[[str], str], *, limit: int = DEFAULT_LIMIT, tail: int = LOG_TAIL_BYTES,
        interval: float = 0.05, safe_cut: Callable[[str], int] | None = None,
        masker: Masker | None = None,
    ):
        # `masker` gives `mask` and `safe_cut` at once; a `safe_cut` that is a bound
        # Masker method gives it too (to mask the edges of a truncation cut)
        if masker is None and hasattr(getattr(safe_cut, "__self__", None), "hide_cut_end"):
            masker = safe_cut.__self__  # type: ignore[union-attr]
        if masker:
            safe_cut = safe_cut or masker.safe_cut
        self._masker = masker if masker else None
        self._emit, self._key, self._mask = emit, key, mask
        # a secret printed in two pieces must not be written as two unmasked halves:
        # the end of each stream that could start a secret waits for the next flush
        self._safe_cut = safe_cut
        self._carry: dict[str, str] = {}
        self._limit, self._tail_limit, self._interval = limit, tail, interval
        self._pending: list[tuple[str, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.written = 0
        self.dropped = 0
        self._tail: deque[tuple[str, str]] = deque()
        self._tail_bytes = 0

    def set_attempt(self, attempt: int) -> None:
        self.flush(final=True)
        self._key = {**self._key, "attempt": attempt}

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        size = len(text.encode("utf-8", "replace"))
        if self.written + size > self._limit:
            room = self._limit - self.written
            if room > 0:  # fill up to the limit, counted in bytes, cut at a character
                head = text.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
                self._add(stream, head)
                self.written = self._limit
                text = text[len(head):]
                size = len(text.encode("utf-8", "replace"))
            if text:
                self._keep_tail(stream, text, size)
            return
        self.written += size
        self._add(stream, text)

    def _add(self, stream: str, text: str) -> None:
        if self._pending and self._pending[-1][0] == stream:
            self._pending[-1] = (stream, self._pending[-1][1] + text)
        else:
            self._pending.append((stream, text))
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)
            except RuntimeError:  # no loop (a sync python step's thread): write at close
                pass

    def _keep_tail(self, stream: str, text: str, size: int) -> None:
        self.dropped += size
        self._tail.append((stream, text))
        self._tail_bytes += size
        while self._tail_bytes > self._tail_limit:  # keep exactly the last `tail` bytes
            first_stream, first = self._tail[0]
            data = first.encode("utf-8", "replace")
            excess = self._tail_bytes - self._tail_limit
            if len(data) <= excess:
                self._tail.popleft()
                self._tail_bytes -= len(data)
            else:
                cut = data[excess:].decode("utf-8", "ignore")
                self._tail[0] = (first_stream, cut)
                self._tail_bytes -= len(data) - len(cut.encode("utf-8"))

    def flush(self, final: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for stream, text in self._pending:
            text = self._carry.pop(stream, "") + text
            if self._safe_cut is not None and not final:
                cut = self._safe_cut(text)
                text, self._carry[stream] = text[:cut], text[cut:]
            if text:
                self._emit({**self._key, "stream": stream, "text": self._mask(text), "at": time.time()})
        self._pending.clear()
        if final:
            for stream, text in self._carry.items():
                if text:
                    self._emit({**self._key, "stream": stream, "text": self._mask(text), "at": time.time()})
            self._carry.clear()

    def close(self) -> None:
        """Write what is pending, and the marker and tail if the limit was reached."""
        if self._tail:
            # the head first: what each stream holds back ends where the text was cut
            self.flush()
            if self._masker is not None:
                self._carry = {stream: self._masker.hide_cut_end(text) for stream, text in self._carry.items()}
            self.flush(final=True)
            kept = sum(len(t.encode("utf-8", "replace")) for _, t in self._tail)
            self._pending.append((
                "treadle",
                f"\n[treadle: log truncated: the limit is {self._limit} bytes per step; "
                f"{self.dropped - kept} bytes left out; the last {kept} bytes follow]\n",
            ))
            for stream, text in self._tail:
                if self._pending[-1][0] == stream:
                    self._pending[-1] = (stream, self._pending[-1][1] + text)
                else:
                    self._pending.append((stream, text))
            if self._masker is not None:  # and each stream's tail starts where it was cut
                started: set[str] = set()
                for i, (stream, text) in enumerate(self._pending):
                    if stream != "treadle" and stream not in started:
                        started.add(stream)
                        self._pending[i] = (stream, self._masker.hide_cut_start(text))
            self._tail.clear()
            self._tail_bytes = 0
            self.dropped = 0
        self.flush(final=True)
