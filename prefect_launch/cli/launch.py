"""`prefect-launch launch`: put a job on a queue, as `wandb launch` does.

`--dry-run` submits nothing and prints `{"resource", "image", "submission"}`;
with `-r/-R` (and `--templates`, `-v`) it needs no server at all.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from prefect_launch.cli.common import clear_errors, connect, echo_json, parse_resource, run, stderr


class LaunchConfigFile(BaseModel):
    """The `-c/--config` launch spec, as W&B users write it."""

    model_config = ConfigDict(extra="forbid")
    uri: str | None = None
    job: str | None = None
    docker_image: str | None = Field(default=None, validation_alias=AliasChoices("docker_image", "image_uri"))
    entry_point: list[str] | str | None = Field(default=None, validation_alias=AliasChoices("entry_point", "entrypoint"))
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    run_id: str | None = None
    queue: str | None = None
    resource: str | None = None
    git_ref: str | None = None
    base_image: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    resource_args: dict[str, Any] = Field(default_factory=dict)


# `-v a=1,b=2` sets two fields: a comma starts another pair where a field name and `=` follow it.
_NEXT_PAIR = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*=)")


def _set_vars(given: list[str]) -> dict[str, str]:
    """`-v NAME=VALUE` (repeatable, or several pairs in one: `-v a=1,b=2`); a value may hold `=` and commas.

    >>> _set_vars(["a=1,b=2", "tag=x=y", "list=1,2"])
    {'a': '1', 'b': '2', 'tag': 'x=y', 'list': '1,2'}
    """
    from prefect_launch.errors import LaunchError

    values = {}
    for pair in (pair for option in given for pair in _NEXT_PAIR.split(option)):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise LaunchError(f"-v/--set-var {pair!r}: expected NAME=VALUE")
        values[name.strip()] = value
    return values


def is_git_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "ssh://", "git@", "file://", "ext::", "git://"))


def _build_spec(file: LaunchConfigFile, uri: str | None, docker_image: str | None, job: str | None,
                entry_point: str | None, project: str | None, entity: str | None,
                name: str | None, run_id: str | None, store: bool, git_ref: str | None = None,
                base_image: str | None = None, dockerfile: str | None = None,
                code_storage: str | None = None, ttl: int | None = None) -> tuple[Any, Path | None]:
    """The LaunchSpec (flags over the -c file) and the local code folder, if any."""
    from prefect_launch.errors import LaunchError
    from prefect_launch.sources import check_entry_point_file, code
    from prefect_launch.spec import CodeSource, GitSource, ImageSource, LaunchSpec, new_run_id

    uri = uri or file.uri
    docker_image = docker_image or file.docker_image
    job = job or file.job
    given = [flag for flag, value in (("-u/--uri", uri), ("-d/--docker-image", docker_image), ("-j/--job", job)) if value]
    if len(given) > 1:
        raise LaunchError(f"give one of -u/--uri, -d/--docker-image, -j/--job, not {' and '.join(given)}")
    if not given:
        raise LaunchError("nothing to launch: give -u/--uri (a code folder), -d/--docker-image or -j/--job")
    git_ref = git_ref or file.git_ref
    if git_ref and not (uri and is_git_uri(uri)):
        raise LaunchError("--git-ref needs a git -u/--uri (https://... or git@host:...)")

    argv = shlex.split(entry_point) if entry_point else file.entry_point
    if isinstance(argv, str):
        argv = shlex.split(argv)
    folder = Path(uri) if uri and not is_git_uri(uri) else None
    source = None
    if uri and folder is None:
        try:
            source = GitSource(uri=uri, ref=git_ref)
        except ValidationError as exc:
            raise LaunchError(str(exc.errors()[0]["ctx"].get("error", exc.errors()[0]["msg"]))) from None
    elif folder is not None:
        if not folder.is_dir():
            raise LaunchError(f"-u/--uri {uri!r}: code folder not found")
        overrides_entry = file.overrides.get("entry_point") or file.overrides.get("entrypoint")
        check_entry_point_file(list(overrides_entry or argv or []), folder, f"code folder {uri!r}")
        if store:
            from prefect_launch.cli.follow import working
            from prefect_launch.home import launch_home

            with working(f"Packing and storing code folder {uri}"):
                source = code.upload(folder, code.code_storage(code_storage, launch_home()))
        else:
            source = CodeSource(digest=code.folder_digest(folder), storage=code.DEFAULT_STORAGE)
    elif docker_image:
        source = ImageSource(image=docker_image)

    spec = LaunchSpec(
        job=job,
        source=source,
        entry_point=argv or None,
        project=project or file.project or "uncategorized",
        entity=entity or file.entity,
        run_name=name or file.name,
        run_id=run_id or file.run_id or new_run_id(),
        base_image=base_image or file.base_image,
        overrides={**file.overrides, **({"dockerfile": dockerfile} if dockerfile else {})},
        resource_args=file.resource_args,
        ttl=ttl,
    )
    return spec, folder


class _NoServer:
    """The Prefect client of a server-less dry run: nothing in its queue config may need one."""

    def __getattr__(self, name: str) -> Any:
        from prefect_launch.errors import LaunchError

        raise LaunchError("a dry run with -r/--resource has no Prefect server to read {{ prefect.blocks.* }} or "
                          "{{ prefect.variables.* }} from: dry-run against a queue (-q) instead")


async def _dry_run_queue(queue: str | None, resource: str | None, resource_args: str | None,
                         templates: Path | None, raw_values: dict[str, str]):
    """The queue config a run with these template values gets, filled by the agent's own call: from the
    queue's pool on the server, or from -r/-R/--templates with no server at all."""
    from prefect_launch.prepare import job_configuration
    from prefect_launch.templates import check_values, coerce_values

    if resource:
        from prefect_launch.config_files import load_config_file, parse_inline
        from prefect_launch.deployments.queues import QueueDefinition
        from prefect_launch.templates import parse_templates

        args = parse_inline(resource_args, "-R/--resource-args") if resource_args else {}
        fields = parse_templates(load_config_file(templates, "templates")) if templates else {}
        template = QueueDefinition(name="dry-run", resource=parse_resource(resource), resource_args=args,
                                   templates=fields).check("-R/--resource-args").base_job_template()
        values = check_values(template["variables"], coerce_values(template["variables"], raw_values))
        return (await job_configuration(template, values, _NoServer())).queue_config()

    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import read_queue

    async with get_client() as client:
        template = (await read_queue(client, queue)).base_job_template
        values = check_values(template["variables"], coerce_values(template["variables"], raw_values))
        return (await job_configuration(template, values, client)).queue_config()


def launch_command(
    queue: Optional[str] = typer.Option(None, "--queue", "-q", help="Queue to put the job on"),
    entry_point: Optional[str] = typer.Option(None, "--entry-point", "-E", help='Command, e.g. "python train.py"'),
    uri: Optional[str] = typer.Option(None, "--uri", "-u", help="Code folder, or git remote (https:// or git@host:)"),
    git_ref: Optional[str] = typer.Option(None, "--git-ref", help="Branch, tag or commit of a git -u/--uri"),
    docker_image: Optional[str] = typer.Option(None, "--docker-image", "-d", help="Prebuilt image"),
    job: Optional[str] = typer.Option(None, "--job", "-j", help="Stored job: [project/]name"),
    base_image: Optional[str] = typer.Option(None, "--base-image", "-B", help="Base image of the generated Dockerfile"),
    dockerfile: Optional[str] = typer.Option(None, "--dockerfile", "-D", help="Dockerfile in the code folder to build with"),
    code_storage: Optional[str] = typer.Option(None, "--code-storage", help="Storage block for code, e.g. s3-bucket/code (default: local)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Launch spec JSON/YAML (overrides, resource_args, ...)"),
    priority: Optional[str] = typer.Option(None, "--priority", "-P", help="critical, high, medium or low"),
    set_var: list[str] = typer.Option([], "--set-var", "-v", help="Template field NAME=VALUE (repeatable)"),
    project: Optional[str] = typer.Option(None, "--project", "-p", help="W&B project"),
    entity: Optional[str] = typer.Option(None, "--entity", "-e", help="W&B entity"),
    name: Optional[str] = typer.Option(None, "--name", help="W&B run name"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="W&B run id (default: a new one)"),
    wait: bool = typer.Option(False, "--wait", help="Follow the run, stream its logs, exit non-zero if it fails"),
    ttl: Optional[int] = typer.Option(None, "--ttl", min=1, help="Seconds the job may wait on the queue; then it ends Cancelled"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what the target would receive; submit nothing"),
    resource: Optional[str] = typer.Option(None, "--resource", "-r", help="Dry run without a server: the resource"),
    resource_args: Optional[str] = typer.Option(None, "--resource-args", "-R", help="Dry run: resource args JSON/YAML or @file"),
    templates: Optional[Path] = typer.Option(None, "--templates", help="Dry run: template fields file"),
) -> None:
    """Put a job on a queue (or, with --dry-run, show what its target would receive)."""
    clear_errors(_launch)(**locals())


def _launch(queue, entry_point, uri, git_ref, docker_image, job, base_image, dockerfile, code_storage, config, priority,
            set_var, project, entity, name, run_id, wait, ttl, dry_run, resource, resource_args, templates) -> None:
    from prefect_launch.config_files import load_config_file
    from prefect_launch.errors import LaunchError
    from prefect_launch.redact import redact

    file = LaunchConfigFile.model_validate(load_config_file(config, "launch config") if config else {})
    queue = queue or file.queue
    values = _set_vars(set_var)
    if dry_run:
        resource = resource or file.resource
        if not resource:
            if not queue:
                raise LaunchError("--dry-run needs -q/--queue, or -r/--resource for a server-less dry run")
            connect()
        spec, folder = _build_spec(file, uri, docker_image, job, entry_point, project, entity, name, run_id,
                                   store=False, git_ref=git_ref, base_image=base_image, dockerfile=dockerfile)
        preparation = _dry_run_preparation(queue, run(_dry_run_queue, queue, resource, resource_args, templates, values))
        # A git job is cloned (into the agent cache) so its image tag is exact.
        job_resolved = preparation.resolve(spec, fetch=spec.source is not None and spec.source.type == "git")
        # The image is planned from the folder on this machine; the submission names the run's own
        # copy of it, where the agent runs and builds the job.
        planned = job_resolved.model_copy(update={"workdir": folder}) if folder is not None else job_resolved
        image = preparation.plan_image(planned, spec.resource_args).ref
        # Exactly what the target receives, but for secret values (`redact`), as the run's artifact shows it:
        # a dry run against a queue must not read its admin's secrets out to a submitter.
        echo_json(redact(preparation.render(_with_image(preparation, job_resolved, image), spec.resource_args)))
        return

    if resource or resource_args or templates:
        raise LaunchError("-r/--resource, -R/--resource-args and --templates are for --dry-run; a queue holds its own config")
    if not queue:
        raise LaunchError("give -q/--queue (or use --dry-run)")
    connect()
    spec, _ = _build_spec(file, uri, docker_image, job, entry_point, project, entity, name, run_id,
                          store=True, git_ref=git_ref, base_image=base_image, dockerfile=dockerfile,
                          code_storage=code_storage, ttl=ttl)
    flow_run = run(_enqueue, queue, spec, priority, values)
    from prefect.utilities.urls import url_for

    stderr(f"Enqueued run {spec.run_id} on queue {queue!r} (flow run {flow_run.name}, {flow_run.id})")
    link = url_for("flow-run", obj_id=flow_run.id)
    if link:
        stderr(f"View it at {link}")
    typer.echo(spec.run_id)
    if wait:
        final = run(follow, flow_run.id)
        if not final.is_completed():
            raise typer.Exit(1)


def _dry_run_preparation(queue_name, queue_config):
    """The agent's preparation of a job, with this machine's agent config (`~/.config/wandb/launch-config.yaml`).

    Its environment is verified for a remote target when its cloud answers; a dry run needs no
    cloud: when it cannot be reached, what depends on it (the account of a bare SageMaker role
    name) fails with its own message.
    """
    from prefect_launch.agent_config import load_agent_config
    from prefect_launch.agent_setup import agent_setup
    from prefect_launch.errors import LaunchError
    from prefect_launch.home import launch_home
    from prefect_launch.prepare import Preparation
    from prefect_launch.targets import target_class

    agent_config = load_agent_config(None)
    settings, environment, registry = agent_setup(agent_config)
    if environment is not None and target_class(queue_config.resource).runs_remotely:
        try:
            environment.verify()
        except LaunchError as exc:
            stderr(f"note: {exc}")
    return Preparation(queue_name or "(dry run)", queue_config, launch_home(), settings, environment, registry,
                       secure_mode=agent_config.secure_mode)


def _with_image(preparation, job, image):
    """The job with its image, and the registry's pull login where the agent would hand it over (noted when unreachable)."""
    from prefect_launch.errors import LaunchError

    try:
        return preparation.with_image(job, image)
    except LaunchError as exc:
        stderr(f"note: no pull secret shown: {exc}")
        return job.model_copy(update={"image": image})


async def _enqueue(queue, spec, priority, raw_values):
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import enqueue, read_queue
    from prefect_launch.templates import coerce_values

    async with get_client() as client:
        values = {}
        if raw_values:  # template values are typed by the queue's schema
            pool = await read_queue(client, queue)
            values = coerce_values(pool.base_job_template.get("variables", {}), raw_values)
        return await enqueue(client, queue, spec, priority, values)


async def follow(flow_run_id) -> Any:
    """Print the run's logs, and its state and stage changes on stderr, until it ends; return its final state."""
    from prefect.client.orchestration import get_client

    from prefect_launch.cli.follow import RunProgress, stream_logs

    async with get_client() as client:
        progress = RunProgress(client)
        flow_run = await stream_logs(client, flow_run_id, until_final=True, on_poll=progress)
    stderr(progress.summary())
    state = flow_run.state
    stderr(f"Run finished: {state.name}" + (f": {state.message}" if state.message else ""))
    return state
