"""Queues on a real Prefect server: pools, priority work queues, template schemas."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import JOBS, cli, flow_run_of, job_report, launch, on_server, run_id_of, run_logs, unique, wait_for_final, wait_for_log


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_create_list_show_delete(make_queue, tmp_path):
    config = write(tmp_path / "queue.yaml", "env:\n  JOB_GPUS: '{{ gpus }}'\n  JOB_KIND: '{{ kind }}'\n")
    templates = write(
        tmp_path / "templates.yaml",
        "gpus: {type: integer, default: 1, minimum: 0, maximum: 4, description: GPUs per job}\n"
        "kind: {type: string, default: small, enum: [small, large]}\n",
    )
    name = make_queue("--resource", "local-process", "--config", str(config), "--templates", str(templates), "--prioritization")
    listed = cli("queue", "list").stdout
    assert any(line.split("\t")[:2] == [name, "local-process"] for line in listed.splitlines())
    shown = json.loads(cli("queue", "show", name).stdout)
    assert shown["resource"] == "local-process"
    assert shown["resource_args"] == {"env": {"JOB_GPUS": "{{ gpus }}", "JOB_KIND": "{{ kind }}"}}
    assert shown["templates"]["gpus"]["maximum"] == 4 and shown["templates"]["kind"]["enum"] == ["small", "large"]
    assert shown["priorities"] == ["critical", "high", "medium", "low"]
    assert shown["runs"] == {}

    import anyio
    from prefect.client.orchestration import get_client

    async def pool_and_queues():
        async with get_client() as client:
            pool = await client.read_work_pool(name)
            queues = await client.read_work_queues(work_pool_name=name)
            deployment = await client.read_deployment_by_name(f"launch/{name}")
            return pool, queues, deployment

    pool, queues, deployment = anyio.run(pool_and_queues)
    assert pool.type == "launch"
    assert pool.base_job_template["variables"]["additionalProperties"] is False
    assert {q.name: q.priority for q in queues} == {"critical": 1, "high": 2, "medium": 3, "low": 4}
    assert deployment.work_pool_name == name and deployment.work_queue_name == "medium"
    assert "spec" in deployment.parameter_openapi_schema["properties"]

    cli("queue", "delete", name)
    assert name not in cli("queue", "list").stdout
    missing = cli("queue", "show", name, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_server_refuses_out_of_range_and_unknown_template_values(make_queue, tmp_path):
    config = write(tmp_path / "queue.yaml", "env:\n  JOB_GPUS: '{{ gpus }}'\n")
    templates = write(tmp_path / "t.yaml", "gpus: {type: integer, default: 1, minimum: 0, maximum: 4}\n")
    name = make_queue("--resource", "local-process", "--config", str(config), "--templates", str(templates))
    base = ("-q", name, "-u", str(JOBS), "-E", "python report.py")
    too_big = launch(*base, "-v", "gpus=9", check=False)
    assert too_big.returncode == 1
    assert "'gpus'" in too_big.stderr and "maximum of 4" in too_big.stderr
    unknown = launch(*base, "-v", "cpus=2", check=False)
    assert unknown.returncode == 1 and "cpus" in unknown.stderr
    assert json.loads(cli("queue", "show", name).stdout)["runs"] == {}


def test_server_itself_enforces_the_schema(make_queue, tmp_path):
    """A client that skips ours (the UI, the API) is refused by the Prefect server."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    templates = write(tmp_path / "t.yaml", "gpus: {type: integer, default: 1, maximum: 4}\n")
    config = write(tmp_path / "queue.yaml", "env:\n  JOB_GPUS: '{{ gpus }}'\n")
    name = make_queue("--resource", "local-process", "--config", str(config), "--templates", str(templates))

    async def create(values):
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(f"launch/{name}")
            await client.create_flow_run_from_deployment(deployment.id, parameters={"spec": {}}, job_variables=values)

    for values in ({"gpus": 5}, {"resource_args": {}}):
        try:
            anyio.run(create, values)
        except PrefectHTTPStatusError as exc:
            assert exc.response.status_code == 422
        else:
            raise AssertionError(f"server accepted {values}")


def test_a_launched_spec_is_not_checked_again_by_the_server_which_checks_prefects_own_runs(make_queue):
    """`launch -q` sends a spec pydantic validated, and opts its run out of the server's parameter schema check
    (~20 ms of server CPU a run); a run from Prefect's client, the UI or `prefect deployment run` keeps it."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import PrefectHTTPStatusError

    name = make_queue("--resource", "local-process")
    deployment = on_server("read_deployment_by_name", f"launch/{name}")
    assert deployment.enforce_parameter_schema
    # A schema no spec fits shows which runs the server checks against it.
    on_server("update_deployment", deployment.id, DeploymentUpdate(
        parameter_openapi_schema={"type": "object", "properties": {"spec": {"type": "integer"}}}))
    run_id = run_id_of(launch("-q", name, "-u", str(JOBS), "-E", "python report.py"))
    run = flow_run_of(run_id)
    assert run.state.is_scheduled() and run.parameters["spec"]["entry_point"] == ["python", "report.py"]

    async def prefects_own():
        async with get_client() as client:
            await client.create_flow_run_from_deployment(deployment.id, parameters=run.parameters)

    try:
        anyio.run(prefects_own)
    except PrefectHTTPStatusError as exc:
        assert exc.response.status_code == 409 and "Validation failed for field 'spec'" in exc.response.text, exc.response.text
    else:
        raise AssertionError("the server did not check a run from Prefect's client against the schema")


def test_template_value_reaches_the_job(make_queue, start_agent, tmp_path):
    config = write(tmp_path / "queue.yaml", "env:\n  TEMPLATE_GPUS: '{{ gpus }}'\n")
    templates = write(tmp_path / "t.yaml", "gpus: {type: integer, default: 1, minimum: 0, maximum: 4}\n")
    name = make_queue("--resource", "local-process", "--config", str(config), "--templates", str(templates))
    start_agent("-q", name)
    run_id = run_id_of(launch("-q", name, "-u", str(JOBS), "-E", "python report.py", "-v", "gpus=3", "--wait"))
    assert job_report(run_logs(flow_run_of(run_id).id), "ENV")["TEMPLATE_GPUS"] == "3"


def test_priorities_run_higher_first_and_fifo_inside(make_queue, start_agent, tmp_path):
    name = make_queue("--resource", "local-process", "--prioritization", "--no-require-wandb-run")
    stamps = tmp_path / "order.txt"
    order = [("low", "l1"), ("medium", "m1"), ("critical", "c1"), ("low", "l2"), ("high", "h1"), ("critical", "c2")]
    for priority, tag in order:
        launch("-q", name, "-u", str(JOBS), "-E", f"python report.py --no-wandb --stamp-file {stamps} {tag}",
               "-P", priority, "--run-id", unique(tag).replace("-", ""))
    unprioritized = make_queue("--resource", "local-process")
    refused = launch("-q", unprioritized, "-u", str(JOBS), "-E", "python report.py", "-P", "high", check=False)
    assert refused.returncode == 1 and "--prioritization" in refused.stderr

    start_agent("-q", name, "--max-jobs", "1")
    deadline = time.monotonic() + 120
    while len(stamps.read_text().splitlines() if stamps.exists() else []) < len(order):
        assert time.monotonic() < deadline, "jobs did not all run"
        time.sleep(0.5)
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async def started_order():
        async with get_client() as client:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
                sort=FlowRunSort.START_TIME_ASC,
            )
            return [run.parameters["spec"]["entry_point"][-1] for run in runs]

    assert anyio.run(started_order) == ["c1", "c2", "h1", "m1", "l1", "l2"]


def test_queue_create_errors_name_the_problem(tmp_path):
    bad_yaml = write(tmp_path / "queue.yaml", "env:\n  A: [1\n")
    result = cli("queue", "create", unique("bad"), "--resource", "local-process", "--config", str(bad_yaml), check=False)
    assert result.returncode == 1 and f"{bad_yaml}:" in result.stderr and "not valid YAML" in result.stderr

    result = cli("queue", "create", unique("bad"), "--resource", "mainframe", check=False)
    assert result.returncode == 1 and "mainframe" in result.stderr and "local-process" in result.stderr

    config = write(tmp_path / "q.yaml", "env:\n  A: '{{ undeclared }}'\n")
    result = cli("queue", "create", unique("bad"), "--resource", "local-process", "--config", str(config), check=False)
    assert result.returncode == 1 and "undeclared" in result.stderr

    templates = write(tmp_path / "t.yaml", "gpus: {type: integer, minimum: 5, maximum: 1}\n")
    result = cli("queue", "create", unique("bad"), "--resource", "local-process", "--templates", str(templates), check=False)
    assert result.returncode == 1 and "gpus" in result.stderr and "minimum" in result.stderr


def test_duplicate_queue_is_refused(make_queue):
    name = make_queue("--resource", "local-process")
    result = cli("queue", "create", name, "--resource", "local-process", check=False)
    assert result.returncode == 1 and "already exists" in result.stderr


def _prefect(*args: str) -> subprocess.CompletedProcess:
    """Prefect's own command line, as a Prefect user types it, against this worker's server."""
    return subprocess.run([str(Path(sys.executable).with_name("prefect")), *args], capture_output=True, text=True,
                          timeout=120, env=os.environ, check=True)


def test_a_pool_made_with_prefects_own_command_is_a_working_queue(start_agent):
    """`prefect work-pool create NAME --type launch` makes the local-process queue `queue create` would make;
    every command works on it, and its launch deployment is made on first use."""
    from prefect_launch.deployments.queues import default_base_job_template

    name = unique("pool")
    _prefect("work-pool", "create", name, "--type", "launch")
    try:
        assert on_server("read_work_pool", name).base_job_template == default_base_job_template()
        shown = json.loads(cli("queue", "show", name).stdout)
        assert (shown["resource"], shown["runs"]) == ("local-process", {})
        assert f"queue {name} (local-process)" in cli("status").stdout
        start_agent("-q", name)
        run_id = run_id_of(launch("-q", name, "-u", str(JOBS), "-E", "python report.py", "--wait"))
        assert flow_run_of(run_id).state.is_completed()
    finally:
        cli("queue", "delete", name, check=False)


def test_a_pool_whose_template_reads_its_config_from_variables_takes_none_from_a_job(start_agent):
    """Prefect's generic default template filled `resource_args` from a job variable: a job could have chosen
    its queue config. Such a pool still runs jobs, and refuses that value."""
    from prefect.client.schemas.actions import WorkPoolCreate

    name = unique("oldpool")
    template = {"job_configuration": {"resource": "{{ resource }}", "resource_args": "{{ resource_args }}",
                                      "require_wandb_run": "{{ require_wandb_run }}"},
                "variables": {"type": "object", "properties": {
                    "resource": {"type": "string", "default": "local-process"},
                    "resource_args": {"type": "object", "default": {}},
                    "require_wandb_run": {"type": "boolean", "default": True}}}}
    on_server("create_work_pool", WorkPoolCreate(name=name, type="launch", base_job_template=template))
    try:
        assert json.loads(cli("queue", "show", name).stdout)["name"] == name
        start_agent("-q", name)
        assert flow_run_of(run_id_of(launch("-q", name, "-u", str(JOBS), "-E", "python report.py",
                                            "--wait"))).state.is_completed()
        deployment = on_server("read_deployment_by_name", f"launch/{name}")
        run_id = unique("esc").replace("-", "")
        on_server("create_flow_run_from_deployment", deployment.id, name=run_id,
                  parameters={"spec": {"source": {"type": "image", "image": "img:1"}, "run_id": run_id}},
                  job_variables={"resource_args": {"env": {"ESCALATED": "1"}}})
        state = wait_for_final(run_id).state
        assert state.is_failed() and "template value resource_args fills the queue config's resource_args" in state.message
    finally:
        cli("queue", "delete", name, check=False)


def test_a_queue_is_changed_in_place(make_queue, start_agent, tmp_path):
    name = make_queue("--resource", "local-process", "--config", str(write(tmp_path / "a.yaml", "env:\n  TEMPLATE_LEVEL: one\n")))
    waiting = run_id_of(launch("-q", name, "-u", str(JOBS), "-E", "python report.py"))  # no agent yet: it waits
    config = write(tmp_path / "b.yaml", "env:\n  TEMPLATE_LEVEL: '{{ level }}'\n")
    templates = write(tmp_path / "t.yaml", "level: {type: string, default: two, enum: [two, three]}\n")
    cli("queue", "update", name, "--config", str(config), "--templates", str(templates), "--prioritization")
    shown = json.loads(cli("queue", "show", name).stdout)
    assert shown["resource_args"] == {"env": {"TEMPLATE_LEVEL": "{{ level }}"}} and shown["templates"]["level"]["default"] == "two"
    assert shown["priorities"] == ["critical", "high", "medium", "low"]
    bad = cli("queue", "update", name, "--config", str(write(tmp_path / "c.yaml", "envv: {}\n")), check=False)
    assert bad.returncode == 1 and "envv: unknown key" in bad.stderr
    start_agent("-q", name)
    assert job_report(run_logs(wait_for_final(waiting).id), "ENV")["TEMPLATE_LEVEL"] == "two"  # the run kept its place
    high = run_id_of(launch("-q", name, "-u", str(JOBS), "-E", "python report.py", "-P", "high", "-v", "level=three",
                            "--wait"))
    assert job_report(run_logs(flow_run_of(high).id), "ENV")["TEMPLATE_LEVEL"] == "three"


def test_a_run_started_by_prefect_is_named_after_its_w_and_b_run_id(make_queue, start_agent):
    """`prefect deployment run 'launch/Q'` (or the UI, or a schedule) names a run as Prefect does; its W&B run id
    finds it while it waits, and its agent renames it after that id."""
    from prefect_launch.spec import run_id_for

    name = make_queue("--resource", "local-process", "--no-require-wandb-run")
    spec = json.dumps({"source": _stored_jobs(), "entry_point": ["python", "report.py", "--no-wandb"]})
    created = _prefect("deployment", "run", f"launch/{name}", "--param", f"spec={spec}")
    flow_run_id = next(line.split()[-1] for line in created.stdout.splitlines() if "UUID" in line)
    from uuid import UUID

    run_id = run_id_for(UUID(flow_run_id))
    assert on_server("read_flow_run", UUID(flow_run_id)).name != run_id
    waiting = cli("status", run_id).stdout
    assert waiting.startswith(f"run {run_id}: Scheduled") and f"no agent on queue {name}" in waiting
    start_agent("-q", name)
    assert wait_for_final(run_id).state.is_completed()
    assert on_server("read_flow_run", UUID(flow_run_id)).name == run_id
    assert cli("status", run_id).stdout.startswith(f"run {run_id}: Completed")
    wait_for_log(run_id, lambda line: line.startswith("ARGS"))  # logs land a moment after the final state
    assert any(line.startswith("ARGS") for line in cli("logs", run_id).stdout.splitlines())


def _stored_jobs() -> dict:
    """The tests' job folder, stored as `launch -u` stores it: its code source."""
    from prefect_launch.home import launch_home
    from prefect_launch.sources import code

    return code.upload(JOBS, code.code_storage(None, launch_home())).model_dump(mode="json")
