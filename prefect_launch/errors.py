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
