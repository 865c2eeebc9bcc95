"""Stopping work when its run is cancelled: a watcher thread shared by builds and local jobs.

Example:
    >>> import threading
    >>> cancel, calls = threading.Event(), []
    >>> watch = CancelWatch(cancel, lambda: calls.append("stopped"))
    >>> cancel.set(); watch.join(); calls, watch.stopped
    (['stopped'], True)
"""

from __future__ import annotations

import threading
from typing import Callable

POLL_SECONDS = 0.25


class CancelWatch:
    """Calls `stop` once if `cancel` is set before `done()` is; `stopped` says whether it was called."""

    def __init__(self, cancel: threading.Event | None, stop: Callable[[], None], name: str = "cancel-watch") -> None:
        self.stopped = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(cancel, stop), name=name, daemon=True)
        if cancel is not None:
            self._thread.start()

    def _watch(self, cancel: threading.Event, stop: Callable[[], None]) -> None:
        while not self._done.is_set():
            if cancel.wait(POLL_SECONDS):
                if not self._done.is_set():
                    self.stopped = True
                    stop()
                return

    def done(self) -> None:
        """The work ended on its own: a cancel from now on stops nothing."""
        self._done.set()

    def ended(self, timeout: float) -> bool:
        """Whether `done()` was called, waiting up to `timeout` seconds for it."""
        return self._done.wait(timeout)

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()
