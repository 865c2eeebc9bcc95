"""What the cloud targets share: following a job that runs elsewhere by polling its status.

Example, a job that is done at the second look::

    >>> import threading
    >>> looks = iter([None, Outcome(state="completed")])
    >>> follow_remote(lambda stop_requested: next(looks), lambda: None, threading.Event(), interval=0)
    Outcome(state='completed', message='', exit_code=None)
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from prefect_launch.settings import settings
from prefect_launch.targets.base import Outcome


def unfilled(value: Any) -> bool:
    """A required queue-config value left empty or as the docs' `<REQUIRED>` placeholder."""
    return value in (None, "", {}, []) or (isinstance(value, str) and value.startswith("<") and value.endswith(">"))


def follow_remote(
    poll: Callable[[bool], Outcome | None],
    request_stop: Callable[[], None],
    cancel: threading.Event,
    interval: float | None = None,
) -> Outcome:
    """Call `poll(stop_requested)` until it returns an outcome; on `cancel`, call `request_stop` once.

    After the stop request the job is still polled until the cloud reports it stopped.
    """
    interval = settings().cloud_poll_seconds if interval is None else interval
    stop_requested = False
    while True:
        outcome = poll(stop_requested)
        if outcome is not None:
            return outcome
        if cancel.is_set() and not stop_requested:
            stop_requested = True
            request_stop()
        if stop_requested:
            time.sleep(interval)
        else:
            cancel.wait(interval)  # wakes at once when the run is cancelled
