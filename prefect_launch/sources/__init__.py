"""Sources: turn a job spec into a resolved job (code fetched, entry point fixed, run id chosen).

Example::

    job = resolve(LaunchSpec(source=CodeSource(...), entry_point=["python", "train.py"]),
                  queue="gpu", home=Path(".prefect-launch"))
    job.workdir   # .prefect-launch/runs/<run_id>/code: this run's own copy of the code
"""

from __future__ import annotations

from pathlib import Path

from prefect.settings import PREFECT_API_URL
from pydantic import TypeAdapter, ValidationError

from prefect_launch.errors import LaunchError
from prefect_launch.sources import code, git
from prefect_launch.spec import CodeSource, GitSource, ImageSource, LaunchSpec, ResolvedJob, Source, new_run_id

_PYTHONS = {"python", "python3"}
# How `wandb launch -E` runs an entry point that is a script of the code rather than a command: python
# for `.py` files, the shell (bash, W&B images' $SHELL) for `.sh` files.
_SCRIPT_RUNNERS = {".py": "python", ".sh": "bash"}


def as_command(argv: list[str]) -> list[str]:
    """The entry point as W&B runs it: `train.py --fast` is `python train.py --fast`, `run.sh` is `bash run.sh`.

    >>> as_command(["train.py", "--fast"]), as_command(["run.sh"]), as_command(["python", "train.py"])
    (['python', 'train.py', '--fast'], ['bash', 'run.sh'], ['python', 'train.py'])
    """
    runner = _SCRIPT_RUNNERS.get(Path(argv[0]).suffix) if argv else None
    return [runner, *argv] if runner else argv


def check_entry_point_file(argv: list[str], folder: Path, where: str) -> None:
    """`python train.py` (or `train.py`, `bash run.sh`) must name a file that exists in the code folder."""
    argv = as_command(argv)
    if len(argv) >= 2 and Path(argv[0]).name in _PYTHONS | {"bash"} and argv[1].endswith(tuple(_SCRIPT_RUNNERS)):
        if not (folder / argv[1]).is_file():
            raise LaunchError(f"entry point file {argv[1]!r} not found in {where}")


def deployment_needs_image(queue: str | None) -> LaunchError:
    """Why a deployed flow's run without an image cannot run on a queue whose target runs images: its code comes with its
    deployment's pull steps, which Prefect's engine runs where the flow runs, and no image holds that engine."""
    return LaunchError(f"queue {queue!r} runs images and this flow's deployment names none: give it one with Prefect "
                       "and the flow's code (flow.deploy(..., image=...), or job_variables image in prefect.yaml), or "
                       "send the flow with prefect_launch.deploy(flow, queue=...), which builds one")


def _job_definition(spec: LaunchSpec) -> tuple[Source | None, list[str] | None, dict]:
    from prefect_launch.blocks.job import LaunchJob

    definition = LaunchJob.find(spec.job, spec.project, spec.entity)
    try:
        source = TypeAdapter(Source).validate_python(definition.source)
    except ValidationError as exc:
        raise LaunchError(f"job {spec.job!r} has an invalid source: {exc.errors()[0]['msg']}") from None
    return source, definition.entry_point or None, definition.input_schema or {}


def _check_run_config(run_config: dict, schema: dict, job: str) -> None:
    if not schema:
        return
    from prefect.utilities.schema_tools.validation import ValidationError as SchemaError
    from prefect.utilities.schema_tools.validation import validate

    try:
        validate(run_config, schema, raise_on_error=True, ignore_required=True)
    except SchemaError as exc:
        raise LaunchError(f"overrides.run_config does not fit job {job!r}: {exc}") from None


def resolve(
    spec: LaunchSpec, queue: str | None, home: Path, fetch: bool = True, runs_remotely: bool = False,
    builds_image: bool = False,
) -> ResolvedJob:
    """Fetch the spec's code (or name its image) and fix its run id, name and argv.

    Code and git jobs get a copy of their code of their own, `<home>/runs/<run_id>/code`
    (unpacked from the verified archive in `<home>/code`, or copied from the checkout in
    `<home>/git`): the run's working directory, and the build context of its image. With
    `fetch=False` (dry runs) that folder is named, not made. A job that `runs_remotely` (its
    target runs off the agent's machine) gets no run folder (`run_dir`), only the code copy its
    build reads.

    A deployed flow's run with neither a job nor a source (its deployment was made with Prefect's
    own `from_source(...).deploy` or `prefect deploy`, and names no image) gets that folder empty:
    Prefect's engine runs the deployment's pull steps there (`git_clone`, `set_working_directory`).
    Only a target that runs the folder itself can run it (not one that `builds_image`).
    """
    source, entry_point = spec.source, spec.entry_point
    if spec.job:
        job_source, job_entry_point, schema = _job_definition(spec)
        source = source or job_source
        entry_point = entry_point or job_entry_point
        _check_run_config(spec.overrides.run_config, schema, spec.job)
    if source is None and spec.flow_run is None:
        raise LaunchError("the job has no source: give -u/--uri, -d/--docker-image or -j/--job")
    if source is None and builds_image:
        raise deployment_needs_image(queue)
    entry_point = as_command(list(spec.overrides.entry_point or entry_point or []))
    argv = entry_point + list(spec.overrides.args)

    run_id = spec.run_id or new_run_id()
    workdir = image = None
    if not isinstance(source, ImageSource):
        # The run's own copy, never the shared cache: what a run writes there stays its own.
        workdir = code.work_path(home / "runs" / run_id)
    if source is None and fetch:
        workdir.mkdir(parents=True, exist_ok=True)  # where the deployment's pull steps fetch its code
    elif isinstance(source, CodeSource) and fetch:
        code.fetch(source, home / "code", workdir)
        check_entry_point_file(argv, workdir, f"code {source.digest[:19]}")
    elif isinstance(source, GitSource) and fetch:
        checkout, commit = git.fetch(source.uri, source.ref, home / "git")
        git.working_copy(checkout, workdir)
        check_entry_point_file(argv, workdir, f"{source.uri} at {commit[:12]}")
    elif isinstance(source, ImageSource):
        image = source.image
    return ResolvedJob(
        run_id=run_id,
        run_name=spec.run_name or run_id,
        # W&B's agent runs a job in its project lower-cased (`LaunchProject.target_project`).
        project=spec.project.lower(),
        entity=spec.entity,
        author=spec.author,
        queue=queue,
        source_kind="deployment" if source is None else source.type,
        argv=argv,
        entry_point=entry_point,
        dockerfile=spec.overrides.dockerfile,
        base_image=spec.base_image,
        run_config=spec.overrides.run_config,
        workdir=workdir,
        image=image,
        run_dir=None if runs_remotely else home / "runs" / run_id,
        attempt=spec.preemptions,
        flow_run=spec.flow_run,
        prefect_api_url=PREFECT_API_URL.value() if spec.flow_run else None,
    )
