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
    "kubernetes": "kubernetes",
}


def missing_extra(exc: ModuleNotFoundError) -> LaunchError | None:
    """The one-line error for an optional library that is not installed; None for any other module.

    >>> str(missing_extra(ModuleNotFoundError("No module named 'boto3'", name="boto3")))
    "boto3 is not installed: pip install 'prefect-launch[aws]'"
    """
    package = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF_MODULE.get(package)
    return LaunchError(f"{package} is not installed: pip install 'prefect-launch[{extra}]'") if extra else None
