"""Every use of Prefect's private API in prefect-launch, in this one module.

prefect-launch supports a range of Prefect releases (`pyproject.toml`), and a
release may change what Prefect keeps private without notice. Prefect's public
API covers the rest of the package (a block's documented `_block_type_slug`,
`_description`, ... declarations included); these cannot do without Prefect's
internals:

- The agent runs launch flows on threads with Prefect's own sync flow engine,
  minus the suspension observer the stock engine starts for every deployment
  run (a thread, an event loop and a websocket each, ~0.3 s per run): the
  run's suspension request is registered, so `suspend_flow_run` called in this
  process still reaches it, but the server is not watched for it.
- The agent's in-thread runs borrow entered sync clients from a pool it keeps
  (`SyncClients`), put in each run's `SyncClientContext`, where Prefect's engine
  would build and enter a new client for every run (~40 ms and a CSRF token
  request on the way from claim to job start); the pool's clients share one TLS
  context, which a client builds for itself otherwise (~0.8 MB of the agent's
  memory per running job).
- The launch worker polls its own way (`LaunchWorker.get_and_submit_flow_runs`),
  so it records each poll where `BaseWorker.is_worker_still_polling` (the health
  check of `prefect worker start --with-healthcheck`) reads it; and it lists the
  installed integrations from package metadata, where Prefect's
  `BaseWorker._worker_metadata` imports every one of them (half an agent's
  start-up CPU).
- Code archives in a `LocalFileSystem` or `RemoteFileSystem` block are streamed
  to and from the block's own path for a key, not read into memory; and
  `job list` makes its job blocks from the block documents one request returns,
  not one request per block.

tests/test_prefect_internals.py checks each name used here against the installed
Prefect (a signature, an attribute its worker sets and reads, a call inside the
method replaced), and fails naming the Prefect release that changed it; it also
fails on a private Prefect name used anywhere else in the package.
"""

from __future__ import annotations

import contextvars
import ssl
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import entry_points
from typing import Any, Iterator

import certifi
from prefect._flow_run_suspension import FlowRunSuspensionRequest, register_flow_run_suspension_request
from prefect.blocks.core import Block
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import BlockDocument, Integration, WorkerMetadata
from prefect.context import SyncClientContext
from prefect.flow_engine import FlowRunEngine
from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY, get_current_settings


class FlowRunEngineWithoutSuspensionObserver(FlowRunEngine):
    """Prefect's sync flow engine, minus the suspension observer.

    A launch flow never suspends (its job runs elsewhere), so the engine
    registers the run's suspension request without observing the server for it.
    """

    @contextmanager
    def setup_flow_run_suspension_request(self) -> Iterator[FlowRunSuspensionRequest]:
        request = self._get_flow_run_suspension_request()
        with register_flow_run_suspension_request(self.flow_run.id, request):
            yield request


class SyncClients:
    """Entered sync clients that in-thread runs borrow, each by one run at a time.

    Prefect's engine reuses the client of the `SyncClientContext` it runs in and
    builds one of its own only without one. A borrowed client is used by its run
    alone, so its enter/exit count is never raced; the pool keeps as many clients
    as runs ran at once, and `close` closes them as the agent stops.

    Example::

        clients = SyncClients()
        with clients.borrowed() as client:
            ...  # Prefect's engine, called here, uses `client`
        clients.close()
    """

    def __init__(self) -> None:
        self._free: dict[str, list[SyncPrefectClient]] = {}  # by the API's URL, which a run's settings name
        self._lock = threading.Lock()
        self._closed = False
        self._tls: ssl.SSLContext | None = None

    @contextmanager
    def borrowed(self) -> Iterator[SyncPrefectClient]:
        api_url = str(get_current_settings().api.url)
        with self._lock:
            free = self._free.setdefault(api_url, [])
            client = free.pop() if free else None
            self._tls = self._tls or _tls_context()
        if client is None:
            client = _new_sync_client(self._tls)
        try:
            # A context of its own per run (its token is per thread); `__init__` would build another client.
            with SyncClientContext.model_construct(client=client):
                yield client
        finally:
            with self._lock:
                closed = self._closed
                if not closed:
                    self._free[api_url].append(client)
            if closed:
                client.__exit__(None, None, None)

    def close(self) -> None:
        with self._lock:
            self._closed, free, self._free = True, self._free, {}
        for client in (client for clients in free.values() for client in clients):
            client.__exit__(None, None, None)


def _new_sync_client(tls: ssl.SSLContext) -> SyncPrefectClient:
    """An entered sync client of its own (`get_client` returns the one of the current `SyncClientContext`, if
    any) that verifies the server with `tls`."""
    context = contextvars.copy_context()
    context.run(SyncClientContext.__var__.set, None)
    return context.run(get_client, sync_client=True, httpx_settings={"verify": tls}).__enter__()


def _tls_context() -> ssl.SSLContext:
    """The TLS context `SyncPrefectClient.__init__` builds for itself when given none, by the same settings."""
    if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=PREFECT_API_SSL_CERT_FILE.value() or certifi.where())


class WorkerInternals:
    """Mixed into `LaunchWorker` ahead of `BaseWorker`: the private worker members it must touch."""

    async def _worker_metadata(self) -> WorkerMetadata | None:
        """The integrations Prefect reports for a worker (each `prefect.collections` entry point
        with its package's version), read from package metadata. Prefect's own version imports
        every integration to list them, prefect_gcp pulling in google-cloud-aiplatform: that was
        half of an agent's start-up CPU. An integration a job needs is still imported when used."""
        entries = entry_points(group="prefect.collections")
        names = {entry.name or entry.value for entry in entries}
        # Only the distributions that declare an entry: parsing every installed one's metadata took 0.2 s.
        versions = {entry.dist.name: entry.dist.version for entry in entries
                    if entry.dist is not None and entry.dist.name.replace("-", "_") in names}
        integrations = [Integration(name=name, version=version) for name, version in versions.items()]
        return WorkerMetadata(integrations=integrations) if integrations else None

    def record_poll(self) -> None:
        """The worker has just asked for scheduled runs: the health check counts from now."""
        self._last_polled_time = datetime.now(timezone.utc)


def storage_path(block: Any, key: str) -> str:
    """Where `key` is in a `LocalFileSystem` or `RemoteFileSystem` block: its base path joined the block's
    own way (a `LocalFileSystem` refuses a key that leaves its base path)."""
    return str(block._resolve_path(key))


def block_from_document(cls: type[Block], document: BlockDocument) -> Block:
    """The block a block document holds, as `Block.load` makes it, without reading the document again."""
    return cls._from_block_document(document)
