"""One background thread serving many runs: what the shared pod watch and the SageMaker status poller have in common.

A `Fanout` keeps each following run's `Mailbox` by key (a pod watch: the run id
and attempt; the status poller: the training job's name). Its thread starts with
the first subscriber, calls `serve` round after round, and ends at the first
round's end after the last subscriber has gone. `subscribe_shared` shares one
fanout per place (an API endpoint and namespace) among all the agent's runs.

Example, a fanout that tells each key the time once a round::

    >>> import time
    >>> class Clock(Fanout):
    ...     def serve(self):
    ...         for key in self.keys():
    ...             self.deliver(key, time.time())
    ...         time.sleep(0.01)
    >>> with subscribe_shared(("clock",), Clock, "run-1") as mailbox:
    ...     isinstance(mailbox.take(timeout=5)[-1], float)
    True
"""

from __future__ import annotations

import abc
import contextlib
import functools
import queue
import threading
from typing import Any, Callable, Hashable, Iterator


class Mailbox:
    """What `fanout` delivered to one run, in order; an exception delivered is raised when taken."""

    def __init__(self, key: Hashable, fanout: "Fanout") -> None:
        self.key = key
        self.fanout = fanout
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, item: Any) -> None:
        self._items.put(item)

    def take(self, timeout: float) -> list[Any]:
        """Everything delivered since the last take, after waiting up to `timeout` for the first item ([] if none)."""
        try:
            items = [self._items.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self._items.get_nowait())
        for item in items:
            if isinstance(item, Exception):
                raise item
        return items


class Fanout(abc.ABC):
    """A thread that serves the runs subscribed to it, round by round (`serve`), while any is."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards the mailboxes, and what a subclass keeps beside them
        # Set when a round should come early: a subscriber came or went (the last one gone ends the thread now).
        self.wake = threading.Event()
        self._mailboxes: dict[Hashable, list[Mailbox]] = {}
        self._thread: threading.Thread | None = None
        self._forget: Callable[[], None] = lambda: None  # takes it out of the shared registry

    @abc.abstractmethod
    def serve(self) -> None:
        """One round: read what changed and `deliver` it; returns to let the fanout end once idle."""

    def subscribed(self, mailbox: Mailbox) -> None:
        """A new subscriber, under `lock`: a subclass hands it what it already knows."""

    def stopped(self) -> None:
        """The thread ends (no subscriber left, or `fail`), under `lock`: a subclass forgets what it saw."""

    def subscribe(self, key: Hashable) -> Mailbox:
        mailbox = Mailbox(key, self)
        with self.lock:
            self._mailboxes.setdefault(key, []).append(mailbox)
            self.subscribed(mailbox)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
                self._thread.start()
        self.wake.set()
        return mailbox

    def unsubscribe(self, mailbox: Mailbox) -> None:
        with self.lock:
            mailboxes = self._mailboxes.get(mailbox.key, [])
            if mailbox in mailboxes:
                mailboxes.remove(mailbox)
            if not mailboxes:
                self._mailboxes.pop(mailbox.key, None)
        self.wake.set()

    def keys(self) -> list[Hashable]:
        with self.lock:
            return list(self._mailboxes)

    def deliver(self, key: Hashable, item: Any) -> None:
        with self.lock:
            self.deliver_locked(key, item)

    def deliver_locked(self, key: Hashable, item: Any) -> None:
        for mailbox in self._mailboxes.get(key, []):
            mailbox.put(item)

    def fail(self, error: Exception) -> None:
        """Every subscriber gets `error` and is dropped; the thread ends (the next subscriber starts a new one)."""
        with _REGISTRY_LOCK, self.lock:
            for mailboxes in self._mailboxes.values():
                for mailbox in mailboxes:
                    mailbox.put(error)
            self._mailboxes.clear()
            self._stop()

    def _stop(self) -> None:
        self._thread = None
        self.stopped()
        self._forget()

    def _idle(self) -> bool:
        with _REGISTRY_LOCK, self.lock:
            if self._mailboxes:
                return False
            self._stop()
            return True

    def _run(self) -> None:
        while self._thread is threading.current_thread() and not self._idle():
            self.serve()


_REGISTRY_LOCK = threading.Lock()
_SHARED: dict[Hashable, Fanout] = {}


def shared_fanouts(kind: type[Fanout]) -> list[Fanout]:
    """The fanouts of a kind running now (tests check that they end)."""
    with _REGISTRY_LOCK:
        return [fanout for fanout in _SHARED.values() if isinstance(fanout, kind)]


def _forget(where: Hashable, fanout: Fanout) -> None:
    """Take a stopped fanout out of the registry (called under its lock), unless another took its place."""
    if _SHARED.get(where) is fanout:
        del _SHARED[where]


@contextlib.contextmanager
def subscribe_shared(where: Hashable, make: Callable[[], Fanout], key: Hashable) -> Iterator[Mailbox]:
    """A mailbox for `key` on the fanout shared at `where` (made by `make()` if none runs there); `where` names
    the kind of fanout too, e.g. `("pods", host, namespace)`."""
    with _REGISTRY_LOCK:
        fanout = _SHARED.get(where)
        if fanout is None:
            fanout = _SHARED[where] = make()
            fanout._forget = functools.partial(_forget, where, fanout)
        mailbox = fanout.subscribe(key)
    try:
        yield mailbox
    finally:
        fanout.unsubscribe(mailbox)
