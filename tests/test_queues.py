"""Queues on a real Prefect server: pools, priority work queues, template schemas."""

import json
import time
from pathlib import Path

from conftest import JOBS, cli, flow_run_of, job_report, launch, run_id_of, run_logs, unique


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
