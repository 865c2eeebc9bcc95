"""`prefect-launch job create|list|describe`: stored job definitions (code or image)."""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from prefect_launch.cli.common import clear_errors, connect, echo_json, store_code

app = typer.Typer(help="Store and list job definitions.", no_args_is_help=True)


class JobKind(str, Enum):
    code = "code"
    git = "git"
    image = "image"


@app.command("create")
@clear_errors
def create(
    kind: JobKind = typer.Argument(..., help="code (a local folder), git (a remote) or image (a container image)"),
    path: str = typer.Argument(..., help="Code folder, git remote, or image name"),
    project: str = typer.Option(..., "--project", "-p", help="W&B project"),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Job name (default: folder or image name)"),
    entry_point: Optional[str] = typer.Option(None, "--entry-point", "-E", help='Command, e.g. "python train.py"'),
    schema: Optional[Path] = typer.Option(None, "--schema", help="JSON Schema the run config must fit"),
    entity: Optional[str] = typer.Option(None, "--entity", "-e", help="W&B entity (recorded only)"),
    git_ref: Optional[str] = typer.Option(None, "--git-ref", help="git jobs: branch, tag or commit"),
    code_storage: Optional[str] = typer.Option(None, "--code-storage", help="code jobs: storage block, e.g. s3-bucket/code"),
) -> None:
    """Create (or replace) a job definition that `launch -j NAME` runs."""
    from prefect_launch.config_files import load_config_file
    from prefect_launch.errors import LaunchError

    argv = shlex.split(entry_point) if entry_point else []
    input_schema = load_config_file(schema, "input schema") if schema else None
    if kind is JobKind.code:
        folder = Path(path)
        if not folder.is_dir():
            raise LaunchError(f"code folder {path!r} does not exist or is not a folder")
        if not argv:
            raise LaunchError("a code job needs -E/--entry-point")
        from prefect_launch.sources import check_entry_point_file

        check_entry_point_file(argv, folder, f"code folder {path!r}")
        default_name = folder.resolve().name
    elif kind is JobKind.git:
        from prefect_launch.git_remotes import check_remote

        check_remote(path)
        if not argv:
            raise LaunchError("a git job needs -E/--entry-point")
        default_name = path.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git")
    else:
        default_name = path.rsplit("/", 1)[-1].split(":")[0]

    from prefect_launch.blocks.job import check_job_name

    check_job_name(name or default_name)
    connect()
    from prefect_launch.blocks.job import LaunchJob

    fields = dict(project=project, name=name or default_name, entity=entity, entry_point=argv, input_schema=input_schema)
    if kind is JobKind.code:
        folder = Path(path)
        source = store_code(folder, code_storage)
        job = LaunchJob.from_code_folder(folder, source, **fields)
    elif kind is JobKind.git:
        job = LaunchJob(source={"type": "git", "uri": path, "ref": git_ref}, **fields)
    else:
        job = LaunchJob(source={"type": "image", "image": path}, **fields)
    job.save_as_definition()
    where = job.source.get("digest") or path + (f"@{git_ref}" if git_ref else "")
    typer.echo(f"Created job {job.project}/{job.name} ({kind.value}: {where})")


@app.command("list")
@clear_errors
def list_(
    project: Optional[str] = typer.Option(None, "--project", "-p", help="Only this project"),
    as_json: bool = typer.Option(False, "--json", help="A JSON list of jobs (name, project, entity, source, entry_point)"),
) -> None:
    """List job definitions, per project as the W&B App's Jobs tab does (projects compared as W&B does, ignoring case)."""
    connect()
    from prefect_launch.blocks.job import LaunchJob

    jobs = [job for job in LaunchJob.list_all() if project is None or job.project.lower() == project.lower()]
    if as_json:
        echo_json([job.model_dump(include={"project", "name", "entity", "source", "entry_point"}) for job in jobs])
        return
    for job in jobs:
        source = job.source.get("digest") or job.source.get("image") or job.source.get("uri")
        typer.echo(f"{job.project}/{job.name}\t{job.source.get('type')}\t{source}\t{' '.join(job.entry_point)}")


@app.command("describe")
@clear_errors
def describe(
    name: str = typer.Argument(..., help="[project/]name"),
    project: Optional[str] = typer.Option(None, "--project", "-p"),
) -> None:
    """Show one job definition."""
    connect()
    from prefect_launch.blocks.job import LaunchJob

    job = LaunchJob.find(name, project)
    echo_json(job.model_dump(include={"project", "name", "entity", "source", "entry_point", "requirements", "input_schema"}))
