"""The one exception type a launch raises for a job it cannot run.

Its message is what the user sees as the run's state message, so it says what
went wrong and where (which field, file or queue), never a traceback.
"""


class LaunchError(Exception):
    """Bad input: a job that cannot be launched as given, a config that cannot be read.

    The agent stays up; only this job fails. Config, template and macro errors
    are subclasses.
    """


class AdoptionFailed(LaunchError):
    """A job its dead agent submitted cannot be followed again (gone, or its target cannot attach): the run ends Crashed, never resubmitted."""


# The extra that installs each optional library (pyproject.toml's optional-dependencies).
_EXTRA_OF_MODULE = {
    "boto3": "aws", "botocore": "aws", "prefect_aws": "aws",
    "google": "gcp", "vertexai": "gcp", "prefect_gcp": "gcp",
    "azure": "azure",
    "kubernetes": "kubernetes", "prefect_kubernetes": "kubernetes",
}


def missing_extra(exc: ModuleNotFoundError) -> LaunchError | None:
    """The one-line error for an optional library that is not installed; None for any other module.

    >>> str(missing_extra(ModuleNotFoundError("No module named 'boto3'", name="boto3")))
    "boto3 is not installed: pip install 'prefect-launch[aws]'"
    """
    package = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF_MODULE.get(package)
    return LaunchError(f"{package} is not installed: pip install 'prefect-launch[{extra}]'") if extra else None


def field_path(loc: tuple) -> str:
    """A pydantic error location as the config's own path: `spec.containers[0].image`.

    >>> field_path(("spec", "containers", 0, "image"))
    'spec.containers[0].image'
    """
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def invalid_config(exc, where: str) -> LaunchError:
    """One line for a config that fails its model (a pydantic `ValidationError`): every bad field by its path.

    `where` says which config (`kubernetes queue config (queue.yaml)`).
    """
    problems = []
    for error in exc.errors(include_url=False):
        path = field_path(error["loc"])
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{path}: {message}" if path else message)
    return LaunchError(f"{where}: " + "; ".join(dict.fromkeys(problems)))
