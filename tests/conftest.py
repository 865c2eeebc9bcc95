"""Shared test fixtures: a real Prefect server per test process, agents per test.

`./dev test` runs the tests in parallel workers (pytest-xdist). Each worker has a home
(`PREFECT_LAUNCH_HOME`) and a Prefect server of its own, started in `pytest_configure`, before
any test module imports prefect (Prefect reads its settings on import); ports, queue names, run
ids, containers and registries are unique per test. If a server cannot start, the whole run
fails: a suite that silently skips server tests would be blind.

`cli()` runs the command line in the test process where it only talks to the server, and as a
process of its own where it serves or runs a flow.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("prefect-launch"))
EXAMPLES = REPO / "examples"
JOBS = REPO / "tests" / "jobs"
SEEDS = REPO / "tests" / "seeds"

sys.path.insert(0, str(REPO / "drills"))  # the drills' scripts and their AgentProcess (drills/ is not a package)
from agent_process import AgentProcess  # noqa: E402

# Job scripts run as launch jobs; they are not test modules (and must not be imported by --doctest-modules).
collect_ignore = ["jobs"]

_session: dict = {}


def _runs_tests(config: pytest.Config) -> bool:
    """False in the controller of a parallel run (`-n N`): its workers run the tests, each with its own server."""
    return hasattr(config, "workerinput") or getattr(config.option, "dist", "no") == "no"


# A fresh Prefect server's start took ~33 s of CPU here (2 cores, under load), and ~11 s with a migrated
# database and no block registration: migrating an empty database and importing every installed integration
# (google-cloud-aiplatform alone is a fifth of it) to register block types is the rest. The run does that once, by starting and stopping a server on an empty home (the product's own first start); every server a test
# starts then begins with a copy of that database, block types included, and skips the registration.
DATABASE_TEMPLATE = "PREFECT_LAUNCH_TEST_DATABASE_TEMPLATE"
_TEMPLATE_SERVER_ENV = {"PREFECT_API_BLOCKS_REGISTER_ON_START": "false", "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}


def _make_database_template() -> Path:
    from prefect_launch.server import start_server, stop_server

    template_home = Path(tempfile.mkdtemp(prefix="prefect-launch-tests-template-"))
    start_server(template_home, port=0)
    stop_server(template_home)
    os.environ[DATABASE_TEMPLATE] = str(_database_of(template_home))
    os.environ.update(_TEMPLATE_SERVER_ENV)  # for every server started from here on, in this process and the workers
    return template_home


def _database_of(home: Path) -> Path:
    from prefect_launch.server import server_env

    return Path(server_env(home)["PREFECT_HOME"]) / "prefect.db"


def seed_database(home: Path) -> Path:
    """`home` with a copy of the run's migrated database (see `DATABASE_TEMPLATE`), for a server started on it."""
    template, database = Path(os.environ[DATABASE_TEMPLATE]), _database_of(home)
    database.parent.mkdir(parents=True, exist_ok=True)
    for part in template.parent.glob(f"{template.name}*"):  # the database and any journal SQLite left
        shutil.copy(part, database.parent / part.name)
    return home


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        from run_cost import RunCost

        config.pluginmanager.register(RunCost(), "run-cost")
        _session["template_home"] = _make_database_template()
    if not _runs_tests(config):
        return
    # Each test process (a parallel worker, or the one process of a serial run) gets a home and
    # a Prefect server of its own: no two workers see each other's queues, runs or agents.
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    home = Path(tempfile.mkdtemp(prefix=f"prefect-launch-tests-{worker}-"))
    os.environ.update(
        PREFECT_LAUNCH_HOME=str(home),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    os.environ.pop("PREFECT_API_URL", None)
    from prefect_launch.server import server_env, start_server

    os.environ.update(server_env(home))
    # Any free port: the default one (4200) is a developer's own embedded server.
    os.environ["PREFECT_API_URL"] = start_server(seed_database(home), port=0)
    _session["home"] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    home = _session.get("home")
    if home:
        from prefect_launch.server import stop_server

        stop_server(home)
        shutil.rmtree(home, ignore_errors=True)
    if "template_home" in _session:
        shutil.rmtree(_session["template_home"], ignore_errors=True)


@pytest.fixture(scope="session")
def home() -> Path:
    return _session["home"]


# Commands a test runs as a process of their own: they serve (an agent, a server, a scheduled
# sweep) or run a flow engine (`sweep create --wait`), which must not live in the test process.
_PROCESS_COMMANDS = {("agent",), ("server",), ("sweep", "schedule")}


def _needs_process(args: tuple[str, ...]) -> bool:
    if args[:2] == ("sweep", "create") and "--wait" in args:
        return True
    return any(args[:len(command)] == command for command in _PROCESS_COMMANDS) and "--check" not in args


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """`env` over this process's environment, and Prefect's settings read from it again, as a
    new process would read them (Prefect reads its settings once, at import)."""
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import Settings

    saved = os.environ.copy()
    os.environ.update(env)
    try:
        with SettingsContext(profile=get_settings_context().profile, settings=Settings()):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _in_process(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess:
    """The command run by typer's test runner in this process: the same code, exit code, stdout and
    stderr (an uncaught exception's traceback included), without a new interpreter importing Prefect."""
    from typer.testing import CliRunner

    from prefect_launch.cli.main import app

    with _environment(env):
        outcome = CliRunner().invoke(app, list(args))
    stderr = outcome.stderr
    if outcome.exception is not None and not isinstance(outcome.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*outcome.exc_info))
    return subprocess.CompletedProcess([CLI, *args], outcome.exit_code, outcome.stdout, stderr)


def cli(*args: str, check: bool = True, env: dict | None = None, timeout: float = 120,
        process: bool = False) -> subprocess.CompletedProcess:
    """Run the real `prefect-launch` command with `env` over the environment.

    In this process (`_in_process`) unless `process` is set or the command serves or runs a flow
    (`_PROCESS_COMMANDS`): then as a new process, killed after `timeout` seconds.
    """
    if process or _needs_process(args):
        result = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **(env or {})}, cwd=REPO)
    else:
        result = _in_process(args, env or {})
    if check and result.returncode != 0:
        raise AssertionError(f"prefect-launch {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator:
    agents: list[AgentProcess] = []

    def start(*args: str) -> AgentProcess:
        agent = AgentProcess(list(args), tmp_path / f"agent-{len(agents)}.log").wait_ready()
        agents.append(agent)
        return agent

    start.agents = agents  # what fixtures built on this one started, for tests that kill them
    yield start
    for agent in agents:
        agent.stop()


def validate_strict(manifest: dict, folder: Path) -> None:
    """Check a Kubernetes object against the real OpenAPI schemas, unknown fields refused (`kubernetes-validate --strict`)."""
    import yaml

    path = folder / f"{manifest['kind']}-{manifest['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    validate = str(Path(sys.executable).with_name("kubernetes-validate"))
    result = subprocess.run([validate, "--strict", "--no-warn", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"{manifest['kind']} {manifest['metadata']['name']}:\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def kube() -> Iterator:
    """The Kubernetes API stand-in (`kube_standin.py`), one per test module."""
    from kube_standin import KubeStandIn

    with KubeStandIn() as kube:
        yield kube


@pytest.fixture
def make_queue() -> Iterator:
    """Create uniquely named queues (deleted afterwards)."""
    created: list[str] = []

    def make(*args: str, prefix: str = "q") -> str:
        name = unique(prefix)
        cli("queue", "create", name, *args)
        created.append(name)
        return name

    yield make
    for name in created:
        cli("queue", "delete", name, check=False)


def peak_overlap(stamps: Path) -> tuple[int, list[tuple[float, float]]]:
    """The most jobs that ran at once, from the 'start end' lines `report.py --stamp-file` appends, and the intervals."""
    intervals = [tuple(map(float, line.split())) for line in stamps.read_text().splitlines()]
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, delta in points:
        running += delta
        peak = max(peak, running)
    return peak, intervals


def launch(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    """`prefect-launch launch ...`; stdout's first line is the run id (then, with --wait, its logs)."""
    return cli("launch", *args, check=check, timeout=timeout)


def run_id_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout.splitlines()[0]


_clients: dict[tuple[str, str], object] = {}


def _client():
    """An open Prefect client for the API this process is set to now (a test may point it at a
    server of its own). Opening one costs about 30 ms of CPU, its handshake included; a call on an
    open one about 6 ms, and the tests poll the server often."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    key = (str(api.url), api.auth_string.get_secret_value() if api.auth_string else "")
    if key not in _clients:
        _clients[key] = get_client(sync_client=True).__enter__()
    return _clients[key]


def on_server(method: str, *args, **kwargs):
    """One Prefect client call from a test's synchronous code, e.g. `on_server("read_flow_run", flow_run_id)`."""
    return getattr(_client(), method)(*args, **kwargs)


def flow_runs_named(run_id: str) -> list:
    """Every flow run named after this W&B run id (the CLI names runs after them; a requeued run has several)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    return on_server("read_flow_runs", flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id])))


def flow_run_of(run_id: str):
    """The flow run whose name is this W&B run id."""
    runs = flow_runs_named(run_id)
    return runs[0] if runs else None


# An owner tag on a run's state that names no process: its pid is above pid_max.
DEAD_AGENT = f"on agent gone [{socket.gethostname()}:{2**22 + 1}:1]"


def held_by(run_id: str, owner: str, submitted: bool) -> None:
    """Put a run as an agent leaves it while it runs the job: Running under the agent's `owner` tag, and, if
    `submitted`, with its submission on record (as the agent records it just before starting the job)."""
    from prefect.states import Running

    flow_run = flow_run_of(run_id)
    on_server("set_flow_run_state", flow_run.id, Running(message=f"Running {owner}"), force=True)
    if submitted:
        on_server("update_flow_run", flow_run.id, infrastructure_pid=f"submitted/{run_id}")


def cancel_run(run_id: str) -> None:
    """Cancel a launch run as a user does, with `prefect flow-run cancel`."""
    subprocess.run([str(Path(sys.executable).with_name("prefect")), "flow-run", "cancel", str(flow_run_of(run_id).id)],
                   check=True, capture_output=True, env=os.environ.copy())


def _pause(looks: int) -> None:
    """Between two looks at the server: 0.2 s at first, growing to 1 s. Each look is one to three reads on the
    server the test process shares with its agents: a test that waits a minute for a job looks ~65 times, not 200."""
    time.sleep(min(1.0, 0.2 * 1.25 ** looks))


def wait_for_log(run_id: str, predicate, timeout: float = 60) -> list[str]:
    """The run's log lines once one of them satisfies `predicate` (the run is seen to have reached a point)."""
    deadline = time.monotonic() + timeout
    for looks in itertools.count():
        lines = run_logs(flow_run_of(run_id).id)
        if any(predicate(line) for line in lines):
            return lines
        assert time.monotonic() < deadline, f"no such log line within {timeout} s; last lines:\n" + "\n".join(lines[-20:])
        _pause(looks)


def wait_for_attempts(run_id: str, count: int, timeout: float = 120) -> list:
    """Every attempt (flow run) of a requeued W&B run, once there are `count` and all have ended."""
    deadline = time.monotonic() + timeout
    for looks in itertools.count():
        runs = flow_runs_named(run_id)
        if len(runs) >= count and all(run.state and run.state.is_final() for run in runs):
            return runs
        assert time.monotonic() < deadline, [run.state for run in runs]
        _pause(looks)


def wait_for_final(run_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    for looks in itertools.count():
        flow_run = flow_run_of(run_id)
        if flow_run and flow_run.state and flow_run.state.is_final():
            return flow_run
        assert time.monotonic() < deadline, f"run {run_id} did not finish within {timeout} s: {flow_run}"
        _pause(looks)


def run_logs(flow_run_id) -> list[str]:
    """Every log line the server holds for a flow run, in order.

    For a finished run, waits (up to 10 s) for the flow engine's last line, `Finished in state
    ...` (logged by the flow, not a task): agents send logs in batches every few seconds, so a
    run's state can be final before its last lines have arrived.
    """
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    def read() -> tuple[list[str], bool, bool]:
        lines, offset, ended = [], 0, False
        while True:
            batch = on_server("read_logs", LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                              sort=LogSort.TIMESTAMP_ASC, offset=offset, limit=200)
            lines += [log.message for log in batch]
            ended = ended or any(log.task_run_id is None and log.message.startswith("Finished in state")
                                 for log in batch)
            offset += len(batch)
            if len(batch) < 200:
                state = on_server("read_flow_run", flow_run_id).state
                return lines, bool(state and state.is_final()), ended

    deadline = time.monotonic() + 10
    while True:
        lines, final, ended = read()
        if not final or ended or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def job_report(lines: list[str], marker: str) -> dict:
    """The JSON a test job printed after `marker` (see tests/jobs/report.py)."""
    for line in lines:
        if line.startswith(marker + " "):
            return json.loads(line[len(marker) + 1:])
    raise AssertionError(f"no {marker} line in the run's logs:\n" + "\n".join(lines[-40:]))


def dry_run_submission(*launch_args: str, home_dir: Path, agent_config: Path | None = None) -> dict:
    """The submission `launch ARGS --dry-run` shows on this machine, with `agent_config` as its
    `~/.config/wandb/launch-config.yaml` (the file an agent is given with --config)."""
    config = home_dir / ".config" / "wandb" / "launch-config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    if agent_config is not None:
        config.write_text(agent_config.read_text())
    return json.loads(cli("launch", *launch_args, "--dry-run", env={"HOME": str(home_dir)}).stdout)["submission"]


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
