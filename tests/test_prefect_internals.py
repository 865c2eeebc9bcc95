"""Prefect's private API, as prefect-launch uses it (prefect_launch/prefect_internals.py).

Each check fails naming the installed Prefect release and the private name it
changed, so a Prefect upgrade that breaks one of them says which line of
prefect_internals.py to revisit. A scan of the package (read with `ast`) fails
on any private Prefect name used outside that module: an import of a
`prefect._*` module or an `_name` from a Prefect module, and, in the classes
that extend Prefect's worker and flow engine, any `self._name` Prefect's own
classes use (a private member read, set, or overridden by accident).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path

import anyio
import prefect
import pytest
from prefect.flow_engine import FlowRunEngine
from prefect.workers.base import BaseWorker

from conftest import unique

from prefect_launch import prefect_internals

ROOT = Path(__file__).resolve().parent.parent
INTERNALS = ROOT / "prefect_launch" / "prefect_internals.py"
# The worker's modules: their classes, mixins included, make up a BaseWorker and a FlowRunEngine.
PREFECT_SUBCLASSES = ("prefect_launch/worker",)


def broken(what: str) -> str:
    return (f"Prefect {prefect.__version__} changed {what}: update prefect_launch/prefect_internals.py "
            "for this release, or narrow the supported range in pyproject.toml")


def test_the_suspension_request_is_registered_the_way_prefect_registers_it():
    from prefect import _flow_run_suspension as suspension

    register = getattr(suspension, "register_flow_run_suspension_request", None)
    assert register is not None, broken("prefect._flow_run_suspension.register_flow_run_suspension_request (gone)")
    assert list(inspect.signature(register).parameters) == ["flow_run_id", "suspension_request"], broken(
        f"register_flow_run_suspension_request{inspect.signature(register)}")
    getter = getattr(FlowRunEngine, "_get_flow_run_suspension_request", None)
    assert getter is not None and list(inspect.signature(getter).parameters) == ["self"], broken(
        "FlowRunEngine._get_flow_run_suspension_request")


def test_the_engine_still_starts_the_observer_through_the_method_replaced():
    """Otherwise the override is never called, and every launch run gets an observer again."""
    assert hasattr(FlowRunEngine, "setup_flow_run_suspension_request"), broken(
        "FlowRunEngine.setup_flow_run_suspension_request (gone)")
    assert "self.setup_flow_run_suspension_request()" in inspect.getsource(FlowRunEngine.start), broken(
        "FlowRunEngine.start (no longer enters setup_flow_run_suspension_request)")


def test_a_run_borrows_a_client_the_engine_uses_and_the_next_run_gets_it_back():
    """Otherwise every in-thread run builds a client of its own again (~40 ms and a CSRF request each)."""
    from prefect.context import SyncClientContext

    assert "SyncClientContext.get_or_create()" in inspect.getsource(FlowRunEngine.initialize_run), broken(
        "FlowRunEngine.initialize_run (no longer takes its client from SyncClientContext.get_or_create)")
    from prefect.client.orchestration import SyncPrefectClient

    # The pool's clients share one TLS context only if Prefect's client takes the one it is given.
    assert "isinstance(tls_verify, ssl.SSLContext)" in inspect.getsource(SyncPrefectClient.__init__), broken(
        "SyncPrefectClient.__init__ (builds its own TLS context even when given one)")
    clients = prefect_internals.SyncClients()
    with clients.borrowed() as first:
        with SyncClientContext.get_or_create() as context:
            assert context.client is first, broken("SyncClientContext.get_or_create (ignores the context entered)")
        with clients.borrowed() as second:  # a run at the same time gets a client of its own
            assert second is not first
    with clients.borrowed() as again:
        assert again in (first, second) and not again._closed
    clients.close()
    assert first._closed and second._closed


def test_the_launch_flow_names_its_result_storage_so_no_run_reads_the_servers(monkeypatch):
    """Otherwise Prefect's engine asks the server for its default result storage on every run's way to its job."""
    from types import SimpleNamespace

    from prefect import flow
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.results import get_result_store
    from prefect.settings import get_current_settings

    from prefect_launch.flows.launch import launch

    asked = []
    monkeypatch.setattr(SyncPrefectClient, "read_server_default_result_storage",
                        lambda self: asked.append(self) or SimpleNamespace(default_result_storage_block_id=None))
    get_result_store().update_for_flow(flow(lambda: None, name="plain"))
    assert len(asked) == 1, broken("ResultStore.update_for_flow (no longer reads the server's default storage)")
    store = get_result_store().update_for_flow(launch)
    assert len(asked) == 1 and not launch.persist_result
    assert store.result_storage.basepath == str(get_current_settings().results.local_storage_path)


def test_a_poll_is_recorded_where_the_health_check_reads_it():
    from prefect_launch.worker.launch_worker import LaunchWorker

    worker = LaunchWorker(work_pool_name=unique("never-created"))
    assert isinstance(getattr(worker, "_last_polled_time", None), datetime), broken(
        "BaseWorker._last_polled_time (no longer set by BaseWorker.__init__)")
    # An hour, not a day: Prefect 3.8 reads the timedelta's `.seconds`, which leaves whole days out.
    worker._last_polled_time = datetime.now(timezone.utc) - timedelta(hours=1)
    assert not worker.is_worker_still_polling(10), broken(
        "BaseWorker.is_worker_still_polling (no longer reads _last_polled_time)")
    worker.record_poll()
    assert worker.is_worker_still_polling(10)


def test_the_agent_reports_the_integrations_prefect_would():
    """The worker metadata (installed integrations) is read from package metadata, the same integrations
    Prefect's own method lists by importing every one (each once: Prefect's repeats a distribution found more
    than once on the path, as an editable install run from its source folder is)."""
    from prefect_launch.worker.launch_worker import LaunchWorker

    prefects_method = getattr(BaseWorker, "_worker_metadata", None)
    assert prefects_method is not None and inspect.iscoroutinefunction(prefects_method), broken(
        "BaseWorker._worker_metadata")
    worker = LaunchWorker(work_pool_name=unique("never-created"))
    ours, prefects = anyio.run(worker._worker_metadata), anyio.run(prefects_method, worker)
    listed = [(integration.name, integration.version) for integration in ours.integrations]
    assert len(listed) == len(set(listed)) and set(listed) == {(i.name, i.version) for i in prefects.integrations}
    assert {"prefect-launch", "prefect-aws", "prefect-gcp"} <= {integration.name for integration in ours.integrations}


def test_storage_blocks_resolve_keys_as_read_and_written(tmp_path: Path):
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    local = LocalFileSystem(basepath=str(tmp_path))
    assert prefect_internals.storage_path(local, "code/ab/cd.tar.gz") == str(tmp_path.resolve() / "code/ab/cd.tar.gz"), broken(
        "LocalFileSystem._resolve_path")
    with pytest.raises(ValueError):
        prefect_internals.storage_path(local, "../outside")
    remote = RemoteFileSystem(basepath="memory://bucket/base")
    assert prefect_internals.storage_path(remote, "code/ab.tar.gz") == "memory://bucket/base/code/ab.tar.gz", broken(
        "RemoteFileSystem._resolve_path")


def test_a_job_block_is_made_from_its_document_as_prefect_loads_it():
    from prefect.blocks.core import Block

    method = getattr(Block, "_from_block_document", None)
    assert method is not None and list(inspect.signature(method).parameters) == ["block_document"], broken(
        "Block._from_block_document")


# How Prefect's documentation says to declare a block type: private names, public meaning.
BLOCK_DECLARATIONS = {"_block_type_name", "_block_type_slug", "_logo_url", "_description", "_documentation_url", "_code_example"}


@cache
def private_members(cls: type) -> frozenset[str]:
    """Every `_name` (not a dunder) a Prefect class and its Prefect bases define or use on `self`."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("prefect."):
            continue
        names.update(name for name in vars(klass) if name.startswith("_") and not name.startswith("__"))
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        names.update(node.attr for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                     and node.attr.startswith("_") and not node.attr.startswith("__"))
    return frozenset(names)


def prefect_classes() -> dict[str, type]:
    """The Prefect classes the package extends or reaches into, by the name it uses for them."""
    from prefect.blocks.core import Block
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem
    from prefect.workers.base import BaseJobConfiguration, BaseVariables

    return {cls.__name__: cls for cls in (BaseWorker, FlowRunEngine, Block, LocalFileSystem, RemoteFileSystem,
                                          BaseJobConfiguration, BaseVariables)}


def private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(ROOT)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno} imports {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] == "prefect" and any(part.startswith("_") for part in alias.name.split("."))]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "prefect":
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"{where}:{node.lineno} imports from {node.module}")
            found += [f"{where}:{node.lineno} imports {alias.name} from {node.module}" for alias in node.names
                      if alias.name.startswith("_")]
    classes = prefect_classes()
    anyones = frozenset().union(*(private_members(cls) for cls in classes.values()))
    found += [f"{where}:{node.lineno} uses {ast.unparse(node)}, a private member of a Prefect class"
              for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and node.attr in anyones
              and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    # Our own classes: those extending a Prefect class, and the worker's mixins.
    extended = {name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                for name in (ast.unparse(base).split("[")[0].split(".")[-1] for base in node.bases) if name in classes}
    if str(where).startswith(PREFECT_SUBCLASSES):
        extended |= {"BaseWorker", "FlowRunEngine"}
    if extended:
        theirs = frozenset().union(*(private_members(classes[name]) for name in extended)) - BLOCK_DECLARATIONS
        found += [f"{where}:{node.lineno} uses self.{node.attr}, a private member of Prefect's {'/'.join(sorted(extended))}"
                  for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in ("self", "cls") and node.attr in theirs]
        found += [f"{where}:{node.lineno} defines {name}, a private member of Prefect's {'/'.join(sorted(extended))}"
                  for klass in ast.walk(tree) if isinstance(klass, ast.ClassDef) for node in klass.body
                  for name in ([node.name] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else
                               [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else
                               [node.target.id] if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else [])
                  if name in theirs]
    return found


def test_no_private_prefect_name_is_used_outside_prefect_internals():
    uses = [use for path in sorted((ROOT / "prefect_launch").rglob("*.py")) if path != INTERNALS for use in private_uses(path)]
    assert not uses, (f"private Prefect names (Prefect {prefect.__version__}) belong in prefect_launch/prefect_internals.py:\n  "
                      + "\n  ".join(uses))
