"""The writes one run driver makes, as records handed to the store's single writer.

A run driver (RunExecution) never speaks to the store directly: every attempt, log
chunk and change of the run row goes through its Journal, in the order it happened.
That keeps the driver's writes in one place, and it is where they are fenced: each
record carries the run's lease (owner and epoch), and the writer commits it only
while that lease still holds (runner/storage/writer.py), so a driver that lost its
run to another server can never overwrite what the new owner wrote. Once the driver
knows it lost the lease, `close()` drops whatever it would still write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..storage.store import Store


class Journal:
    """Args:
        store: the store whose writer commits the records.
        run_id: the run this journal writes for.
        fence: (owner, epoch) of the lease the run is driven under.
        observe: told of each attempt row written (metrics).
    """

    __slots__ = ("_store", "run_id", "fence", "closed", "dropped", "_observe")

    def __init__(self, store: Store, run_id: str, fence: tuple[str, int],
                 observe: Callable[[dict[str, Any]], None] | None = None):
        self._store = store
        self._observe = observe
        self.run_id = run_id
        self.fence = fence
        self.closed = False
        self.dropped = 0  # records not written because the lease was lost

    def close(self) -> None:
        """The lease is lost: write nothing more for this run."""
        self.closed = True

    def step(self, row: dict[str, Any]) -> None:
        """One attempt of a step (or foreach item), inserted or replaced whole; keyed by
        run, step, item and attempt (attempt 0: the step never started)."""
        if self.closed:
            self.dropped += 1
            return
        self._store.put_step(row, self.fence)
        if self._observe is not None:
            self._observe(row)

    def log(self, row: dict[str, Any]) -> None:
        """One chunk of a step's log (the LogSink's sink)."""
        if self.closed:
            self.dropped += 1
            return
        self._store.put_log(row, self.fence)

    def run(self, **columns: Any) -> None:
        """Change columns of the run row."""
        if self.closed:
            self.dropped += 1
            return
        self._store.update_run({"id": self.run_id, **columns}, self.fence)
