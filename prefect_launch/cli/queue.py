"""`prefect-launch queue create|update|list|show|delete`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from prefect_launch.cli.common import clear_errors, connect, echo_json, parse_resource, run

app = typer.Typer(help="Create and inspect queues (one Prefect work pool each).", no_args_is_help=True)


@app.command("create")
@clear_errors
def create(
    name: str = typer.Argument(..., help="Queue name"),
    resource: str = typer.Option(..., "--resource", "-r", help="local-process, local-container, kubernetes, sagemaker, vertex"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Queue config (resource args), YAML or JSON"),
    templates: Optional[Path] = typer.Option(None, "--templates", help="Template fields, YAML: name -> {type, default, minimum, maximum, enum}"),
    prioritization: bool = typer.Option(False, "--prioritization", help="Allow -P/--priority critical|high|medium|low"),
    require_wandb_run: bool = typer.Option(True, "--require-wandb-run/--no-require-wandb-run", help="Fail jobs that never call wandb.init"),
    description: Optional[str] = typer.Option(None, "--description"),
) -> None:
    """Create a queue: its work pool, priority work queues and launch deployment."""
    from prefect_launch.config_files import load_config_file
    from prefect_launch.deployments.queues import QueueDefinition, create_queue
    from prefect_launch.templates import parse_templates

    source = str(config) if config else "queue config"
    definition = QueueDefinition(
        name=name,
        resource=parse_resource(resource),
        resource_args=load_config_file(config, "queue config") if config else {},
        templates=parse_templates(load_config_file(templates, "templates")) if templates else {},
        prioritization=prioritization,
        require_wandb_run=require_wandb_run,
        description=description,
    ).check(source)  # before the server: a bad config costs no connection
    connect()
    from prefect.client.orchestration import get_client

    async def _create() -> None:
        async with get_client() as client:
            await create_queue(client, definition, source)

    run(_create)
    typer.echo(f"Created queue {name!r} ({definition.resource.value})")


@app.command("update")
@clear_errors
def update(
    name: str = typer.Argument(..., help="Queue name"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A new queue config (resource args), YAML or JSON"),
    templates: Optional[Path] = typer.Option(None, "--templates", help="New template fields, YAML (replace the old)"),
    prioritization: bool = typer.Option(False, "--prioritization", help="Add the priority work queues critical..low"),
    require_wandb_run: Optional[bool] = typer.Option(None, "--require-wandb-run/--no-require-wandb-run",
                                                     help="Fail jobs that never call wandb.init"),
    description: Optional[str] = typer.Option(None, "--description"),
) -> None:
    """Change a queue in place: its config, template fields, priorities; runs on it keep their place."""
    from prefect_launch.config_files import load_config_file
    from prefect_launch.templates import parse_templates

    new_config = load_config_file(config, "queue config") if config else None
    new_templates = parse_templates(load_config_file(templates, "templates")) if templates else None
    connect()
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import update_queue

    async def _update() -> None:
        async with get_client() as client:
            await update_queue(client, name, new_config, new_templates, prioritization, require_wandb_run,
                               description, source=str(config) if config else "queue config")

    run(_update)
    typer.echo(f"Updated queue {name!r}")


@app.command("list")
@clear_errors
def list_(as_json: bool = typer.Option(False, "--json", help="A JSON list of queues (name, resource, template fields, paused)")) -> None:
    """List queues."""
    connect()
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import list_queues

    async def _list() -> list:
        async with get_client() as client:
            return await list_queues(client)

    queues = [{"name": pool.name,
               "resource": (pool.base_job_template or {}).get("job_configuration", {}).get("resource"),
               "templates": list((pool.base_job_template or {}).get("variables", {}).get("properties", {})),
               "paused": pool.is_paused} for pool in run(_list)]
    if as_json:
        echo_json(queues)
        return
    for queue in queues:
        typer.echo(f"{queue['name']}\t{queue['resource'] or '?'}\t{', '.join(queue['templates']) or '-'}")


@app.command("show")
@clear_errors
def show(name: str = typer.Argument(..., help="Queue name")) -> None:
    """Show a queue's config, template fields, priorities and runs per state."""
    connect()
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import queue_priorities, read_queue, runs_per_state

    async def _show() -> dict:
        async with get_client() as client:
            pool = await read_queue(client, name)
            template = pool.base_job_template or {}
            return {
                "name": pool.name,
                **template.get("job_configuration", {}),
                "templates": template.get("variables", {}).get("properties", {}),
                "priorities": await queue_priorities(client, name),
                "paused": pool.is_paused,
                "runs": await runs_per_state(client, name),
            }

    echo_json(run(_show))


@app.command("delete")
@clear_errors
def delete(name: str = typer.Argument(..., help="Queue name")) -> None:
    """Delete a queue, its work pool and its launch deployment."""
    connect()
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import delete_queue

    async def _delete() -> None:
        async with get_client() as client:
            await delete_queue(client, name)

    run(_delete)
    typer.echo(f"Deleted queue {name!r}")
