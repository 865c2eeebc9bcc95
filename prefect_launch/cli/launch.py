"""`prefect-launch launch`: put a job on a queue, as `wandb launch` does.

`--dry-run` submits nothing and prints `{"resource", "image", "submission"}`;
with `-r/-R` (and `--templates`, `-v`) it needs no server at all.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import ValidationError

from prefect_launch.cli.common import clear_errors, connect, echo_json, parse_resource, run, stderr, store_code
from prefect_launch.cli.launch_config import LaunchConfigFile, default_project


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


def _build_spec(file: LaunchConfigFile, flags: "LaunchFlags") -> tuple[Any, Path | None]:
    """The LaunchSpec (flags over the -c file, as `wandb launch` takes them) and the local code folder, if any:
    the spec of a code folder has no source yet (`_code_source` packs it, once everything else is checked)."""
    from prefect_launch.blocks.job import JobReference
    from prefect_launch.errors import LaunchError
    from prefect_launch.sources import as_command, check_entry_point_file
    from prefect_launch.spec import GitSource, ImageSource, LaunchSpec, new_run_id

    uri = flags.uri or file.source_uri
    docker_image = flags.docker_image or file.image
    job = flags.job or file.job
    given = [flag for flag, value in (("-u/--uri", uri), ("-d/--docker-image", docker_image), ("-j/--job", job)) if value]
    if len(given) > 1:
        raise LaunchError(f"give one of -u/--uri, -d/--docker-image, -j/--job, not {' and '.join(given)}")
    if not given:
        raise LaunchError("nothing to launch: give -u/--uri (a code folder), -d/--docker-image or -j/--job")
    git_ref = flags.git_ref or file.ref
    if git_ref and not (uri and is_git_uri(uri)):
        raise LaunchError("-g/--git-version needs a git -u/--uri (https://... or git@host:...)")
    base_image = flags.base_image or file.base_image
    if base_image and docker_image:
        raise LaunchError("-B/--base-image is the base of an image built from code; -d/--docker-image names a built "
                          "image: give one of them")
    for flag, value in (("--build-context", flags.build_context), ("-J/--job-name", flags.job_name)):
        if value and not uri:
            raise LaunchError(f"{flag} goes with -u/--uri only, as in `wandb launch`")

    argv = shlex.split(flags.entry_point) if flags.entry_point else file.entry_point
    if isinstance(argv, str):
        argv = shlex.split(argv)
    override_argv = file.overrides.get("entry_point") or file.overrides.get("entrypoint")
    if uri and not (argv or override_argv):
        raise LaunchError("a -u/--uri needs an entry point: give -E/--entry-point, e.g. -E \"python train.py\"")
    folder = Path(uri) if uri and not is_git_uri(uri) else None
    if flags.build_context:
        if folder is None:
            raise LaunchError("--build-context with a git -u/--uri is not supported here: the agent builds a git job "
                              "from the repository's root; give a code folder, or a Dockerfile with -D/--dockerfile")
        folder = _build_context_folder(folder, flags.build_context)
    project = flags.project or file.project or default_project(uri if uri and folder is None else None, job,
                                                               folder is not None)
    if job:
        JobReference.parse(job, project)  # an alias or a malformed name is refused before anything is sent
    source = None
    if uri and folder is None:
        try:
            source = GitSource(uri=uri, ref=git_ref)
        except ValidationError as exc:
            raise LaunchError(str(exc.errors()[0]["ctx"].get("error", exc.errors()[0]["msg"]))) from None
    elif folder is not None:
        if not folder.is_dir():
            raise LaunchError(f"-u/--uri {uri!r}: code folder not found")
        check_entry_point_file(as_command(list(override_argv or argv or [])), folder, f"code folder {folder}")
    elif docker_image:
        source = ImageSource(image=docker_image)

    spec = LaunchSpec(
        job=job,
        source=source,
        entry_point=argv or None,
        project=project,
        entity=flags.entity or file.entity,
        run_name=flags.name or file.name,
        run_id=flags.run_id or file.run_id or new_run_id(),
        author=file.author,
        base_image=base_image,
        overrides={**file.overrides, **({"dockerfile": flags.dockerfile} if flags.dockerfile else {})},
        resource_args=file.resource_args,
        ttl=flags.ttl,
    )
    return spec, folder


def _build_context_folder(folder: Path, build_context: str) -> Path:
    """`--build-context SUB`: the job's code is SUB of the folder (its entry point and -D relative to it), as
    `wandb launch --build-context` makes a job of that part of the source."""
    from prefect_launch.errors import LaunchError

    context = (folder / build_context).resolve()
    if not context.is_relative_to(folder.resolve()):
        raise LaunchError(f"--build-context {build_context!r} is outside the code folder {str(folder)!r}")
    if not context.is_dir():
        raise LaunchError(f"--build-context {build_context!r}: no such folder in {str(folder)!r}")
    return context


class _NoServer:
    """The Prefect client of a server-less dry run: nothing in its queue config may need one."""

    def __getattr__(self, name: str) -> Any:
        from prefect_launch.errors import LaunchError

        raise LaunchError("a dry run with -r/--resource has no Prefect server to read {{ prefect.blocks.* }} or "
                          "{{ prefect.variables.* }} from: dry-run against a queue (-q) instead")


async def _dry_run_queue(queue: str | None, resource: str | None, resource_args: str | None,
                         templates: Path | None, raw_values: dict[str, Any]):
    """The queue config a run with these template values gets, filled by the agent's own call: from the
    queue's pool on the server, or (no -q) from -r/-R/--templates with no server at all."""
    from prefect_launch.prepare import job_configuration
    from prefect_launch.templates import check_values, coerce_values

    if not queue:
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


@dataclass
class LaunchFlags:
    """The flags of one `launch` (W&B's names; see the README's table of `wandb launch` flags)."""

    queue: str | None = None
    entry_point: str | None = None
    uri: str | None = None
    git_ref: str | None = None
    build_context: str | None = None
    job_name: str | None = None
    docker_image: str | None = None
    job: str | None = None
    base_image: str | None = None
    dockerfile: str | None = None
    code_storage: str | None = None
    config: str | None = None
    priority: str | None = None
    set_var: list[str] = field(default_factory=list)
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    run_id: str | None = None
    wait: bool = False
    run_async: bool = False
    ttl: int | None = None
    dry_run: bool = False
    resource: str | None = None
    resource_args: str | None = None
    templates: Path | None = None


def default_queue_argv(argv: list[str]) -> list[str]:
    """`launch -q` with no name means queue `default`, as in `wandb launch` (click's optional value, which typer's
    parser lacks): the command line with the name put in.

    >>> default_queue_argv(["launch", "-q", "-d", "img:1"]), default_queue_argv(["launch", "-u", ".", "--queue"])
    (['launch', '-q', 'default', '-d', 'img:1'], ['launch', '-u', '.', '--queue', 'default'])
    """
    if not argv or argv[0] != "launch":
        return argv
    fixed = list(argv)
    for index in range(len(fixed) - 1, 0, -1):
        if fixed[index] in ("-q", "--queue") and (index + 1 == len(fixed) or fixed[index + 1].startswith("-")):
            fixed.insert(index + 1, "default")
    return fixed


# `wandb launch` flags that cannot mean here what they mean in W&B, and why.
REFUSED_FLAGS = {
    "build": "-b/--build: the agent builds a code or git job's image when it takes the job (with its builder and "
             "registry), so nothing is built before the job is queued",
    "repository": "-rg/--repository: where images are pushed is the agent's builder.destination (or registry.uri) "
                  "in its launch-config.yaml",
    "project_queue": "-pq/--project-queue: queues belong to no project here; give the queue's name with -q",
}


def launch_command(
    queue: Optional[str] = typer.Option(None, "--queue", "-q", help="Queue to put the job on (-q alone: queue 'default', as in wandb launch)"),
    entry_point: Optional[str] = typer.Option(None, "--entry-point", "-E", help='Command, e.g. "python train.py" (train.py alone runs with python, run.sh with bash)'),
    uri: Optional[str] = typer.Option(None, "--uri", "-u", help="Code folder, or git remote (https:// or git@host:)"),
    git_ref: Optional[str] = typer.Option(None, "--git-version", "-g", "--git-ref", help="Branch, tag or commit of a git -u/--uri"),
    build_context: Optional[str] = typer.Option(None, "--build-context", help="Sub-folder of the -u code folder that is the job's code"),
    job_name: Optional[str] = typer.Option(None, "--job-name", "-J", help="Also store the -u code as the job PROJECT/NAME"),
    docker_image: Optional[str] = typer.Option(None, "--docker-image", "-d", help="Prebuilt image"),
    job: Optional[str] = typer.Option(None, "--job", "-j", help="Stored job: [[entity/]project/]name[:latest]"),
    base_image: Optional[str] = typer.Option(None, "--base-image", "-B", help="Base image of the generated Dockerfile"),
    dockerfile: Optional[str] = typer.Option(None, "--dockerfile", "-D", help="Dockerfile in the code folder to build with"),
    code_storage: Optional[str] = typer.Option(None, "--code-storage", help="Storage block for code, e.g. s3-bucket/code (default: local)"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Launch spec: a .json/.yaml file, or the JSON itself"),
    priority: Optional[str] = typer.Option(None, "--priority", "-P", help="critical, high, medium or low"),
    set_var: list[str] = typer.Option([], "--set-var", "-v", help="Template field NAME=VALUE (repeatable)"),
    project: Optional[str] = typer.Option(None, "--project", "-p", help="W&B project (default: as wandb launch picks it)"),
    entity: Optional[str] = typer.Option(None, "--entity", "-e", help="W&B entity"),
    name: Optional[str] = typer.Option(None, "--name", envvar="WANDB_NAME", help="W&B run name"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="W&B run id (default: a new one)"),
    wait: bool = typer.Option(False, "--wait", help="Follow the run, stream its logs, exit non-zero if it fails"),
    run_async: bool = typer.Option(False, "--async", help="Return once the job is queued (what launch does without --wait)"),
    ttl: Optional[int] = typer.Option(None, "--ttl", min=1, help="Seconds the job may wait on the queue; then it ends Cancelled"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what the target would receive; submit nothing"),
    resource: Optional[str] = typer.Option(None, "--resource", "-r", help="With -q: must be the queue's; with --dry-run alone: the resource"),
    resource_args: Optional[str] = typer.Option(None, "--resource-args", "-R", help="With -q: the job's own resource args (the queue's guardrails apply); with --dry-run alone: the queue config. JSON/YAML, a file or @file"),
    templates: Optional[Path] = typer.Option(None, "--templates", help="Server-less dry run: template fields file"),
    build: bool = typer.Option(False, "--build", "-b", hidden=True, help=REFUSED_FLAGS["build"]),
    repository: Optional[str] = typer.Option(None, "--repository", "-rg", hidden=True, help=REFUSED_FLAGS["repository"]),
    project_queue: Optional[str] = typer.Option(None, "--project-queue", "-pq", hidden=True, help=REFUSED_FLAGS["project_queue"]),
) -> None:
    """Put a job on a queue (or, with --dry-run, show what its target would receive)."""
    refused = [REFUSED_FLAGS[key] for key, value in (("build", build), ("repository", repository),
                                                     ("project_queue", project_queue)) if value]
    flags = LaunchFlags(queue, entry_point, uri, git_ref, build_context, job_name, docker_image, job, base_image,
                        dockerfile, code_storage, config, priority, set_var, project, entity, name, run_id, wait,
                        run_async, ttl, dry_run, resource, resource_args, templates)
    clear_errors(_launch)(flags, refused)


def _launch(flags: LaunchFlags, refused: list[str]) -> None:
    from prefect_launch.config_files import parse_inline
    from prefect_launch.errors import LaunchError
    from prefect_launch.redact import redact

    if refused:
        raise LaunchError(refused[0])
    if flags.run_async and flags.wait:
        raise LaunchError("--async returns once the job is queued; --wait follows it to its end: give one of them")
    file = LaunchConfigFile.model_validate(parse_inline(flags.config, "-c/--config") if flags.config else {})
    queue = flags.queue or file.queue
    resource = flags.resource or file.resource
    values = {**file.template_variables, **_set_vars(flags.set_var)}
    if flags.dry_run:
        if queue:
            connect()
        elif not resource:
            raise LaunchError("--dry-run needs -q/--queue, or -r/--resource for a server-less dry run")
        spec, folder = _build_spec(file, flags)
        if folder is not None:
            spec = spec.model_copy(update={"source": _code_source(folder, flags, store=False)})
        queue_config = run(_dry_run_queue, queue, resource, flags.resource_args, flags.templates, values)
        spec = _with_job_args(spec, queue, queue_config, resource, flags.resource_args)
        preparation = _dry_run_preparation(queue, queue_config)
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

    if not queue:
        raise LaunchError("give -q/--queue: jobs run through a queue and its agent here (`wandb launch` without "
                          "--queue runs the job in the command itself), or use --dry-run")
    if flags.templates:
        raise LaunchError("--templates is for a server-less --dry-run; a queue holds its own template fields")
    connect()
    # The queue first: a mistyped queue is reported before any code is packed and stored.
    queue_config = run(_queue_config, queue)
    spec, folder = _build_spec(file, flags)
    spec = _with_job_args(spec, queue, queue_config, resource, flags.resource_args)
    if spec.job:
        from prefect_launch.blocks.job import LaunchJob

        LaunchJob.find(spec.job, spec.project, spec.entity)
    if folder is not None:
        spec = spec.model_copy(update={"source": _code_source(folder, flags, store=True)})
        if flags.job_name:
            _save_job(folder, spec, flags.job_name)
    flow_run = run(_enqueue, queue, spec, flags.priority, values)
    from prefect.utilities.urls import url_for

    stderr(f"Enqueued run {spec.run_id} on queue {queue!r} (flow run {flow_run.name}, {flow_run.id})")
    link = url_for("flow-run", obj_id=flow_run.id)
    if link:
        stderr(f"View it at {link}")
    typer.echo(spec.run_id)
    if flags.wait:
        final = run(follow, flow_run.id)
        if not final.is_completed():
            raise typer.Exit(1)


async def _queue_config(queue: str):
    """The queue's config, template fields unfilled (None when its pool holds none); the queue must exist."""
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import queue_config_of, read_queue

    async with get_client() as client:
        return queue_config_of(await read_queue(client, queue))


def _with_job_args(spec, queue: str | None, queue_config, resource: str | None, resource_args: str | None):
    """With -q, `-r` must name the queue's resource and `-R` is the job's own resource args (replacing the
    spec's, as `wandb launch -R` does); the queue's guardrails check them now, before anything is stored."""
    from prefect_launch.config_files import parse_inline
    from prefect_launch.errors import LaunchError
    from prefect_launch.render import check_job_args

    if not queue or queue_config is None:
        return spec
    if resource and parse_resource(resource) != queue_config.resource:
        raise LaunchError(f"-r/--resource {resource}: queue {queue!r} runs {queue_config.resource.value} jobs; "
                          "the queue decides where its jobs run")
    if resource_args:
        spec = spec.model_copy(update={"resource_args": parse_inline(resource_args, "-R/--resource-args")})
    check_job_args(queue_config, spec.resource_args)
    return spec


def _code_source(folder: Path, flags: LaunchFlags, store: bool):
    """The code folder packed: stored in the code storage (a launch), or only named by its digest (a dry run)."""
    from prefect_launch.sources import code
    from prefect_launch.spec import CodeSource

    if not store:
        return CodeSource(digest=code.folder_digest(folder), storage=code.DEFAULT_STORAGE)
    return store_code(folder, flags.code_storage)


def _save_job(folder: Path, spec, job_name: str) -> None:
    """`-J NAME`: the -u code is also stored as the job PROJECT/NAME, as `wandb launch -J` makes one."""
    from prefect_launch.blocks.job import LaunchJob

    job = LaunchJob.from_code_folder(folder, spec.source, project=spec.project, name=job_name, entity=spec.entity,
                                     entry_point=spec.entry_point or [])
    stderr(f"Stored job {job.save_as_definition()}")


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
