"""A W&B sweep config, typed: what `prefect-launch sweep create CONFIG.yaml` reads.

The keys are W&B's (https://docs.wandb.ai/guides/sweeps/sweep-config-keys): `method`,
`metric`, `parameters`, `run_cap`, `early_terminate`, `scheduler.num_workers`, `launch`,
`job` / `image_uri`, `command` / `program`, `project` / `entity`. A key W&B does not define
is refused with its name, so a typo never silently changes a sweep.

Example:
    >>> config = SweepConfig.model_validate({
    ...     "method": "bayes", "metric": {"name": "loss", "goal": "minimize"},
    ...     "parameters": {"x": {"min": 0.0, "max": 6.0}, "layers": {"values": [1, 2]}},
    ...     "run_cap": 6, "job": "trainer"})
    >>> config.parameters["x"].kind, config.scheduler.num_workers
    ('uniform', 8)

W&B's queue-config block for sweeps (seed 004) is a valid sweep config fragment as written:
    >>> SweepConfig.model_validate({"scheduler": {"num_workers": 4}}).scheduler.num_workers
    4
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from prefect_launch.errors import LaunchError

# W&B's distributions that a search can sample (see search.py for how each maps onto optuna).
# normal, q_normal, log_normal and q_log_normal have no bounds; optuna has no such distribution.
SUPPORTED_DISTRIBUTIONS = (
    "constant", "categorical", "int_uniform", "uniform",
    "q_uniform", "log_uniform", "log_uniform_values", "q_log_uniform_values",
)
UNBOUNDED_DISTRIBUTIONS = ("normal", "q_normal", "log_normal", "q_log_normal", "q_log_uniform", "inv_log_uniform",
                           "inv_log_uniform_values", "beta", "q_beta")
DEFAULT_NUM_WORKERS = 8
DEFAULT_MAX_CONSECUTIVE_FAILURES = 5


class Metric(BaseModel):
    """The metric the search optimizes: a key of each trial's W&B summary."""

    model_config = ConfigDict(extra="forbid")
    name: str
    goal: Literal["minimize", "maximize"] = "minimize"
    target: float | None = Field(default=None, description="Stop the sweep once a trial reaches it")


class Parameter(BaseModel):
    """One hyperparameter: a fixed `value`, a list of `values`, or a `distribution` with bounds."""

    model_config = ConfigDict(extra="forbid")
    value: Any = None
    values: list[Any] | None = None
    probabilities: list[float] | None = None
    distribution: str | None = None
    min: int | float | None = None  # int first: the type written picks int_uniform or uniform
    max: int | float | None = None
    q: float | None = None
    mu: float | None = None
    sigma: float | None = None
    # W&B allows nested parameter groups (`parameters: {optimizer: {parameters: {...}}}`).
    parameters: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        """The distribution, inferred as W&B infers it when the config leaves it out."""
        if self.distribution:
            return self.distribution
        if self.values is not None:
            return "categorical"
        if self.min is not None and self.max is not None:
            # As W&B: integer bounds (1 and 10, not 1.0 and 10.0) mean int_uniform.
            return "int_uniform" if isinstance(self.min, int) and isinstance(self.max, int) else "uniform"
        return "constant"

    def check(self, name: str) -> None:
        """Refuse what cannot be searched, naming the parameter."""
        where = f"parameters.{name}"
        if self.parameters is not None:
            raise LaunchError(f"{where}: nested parameter groups are not supported yet; flatten them")
        kind = self.kind
        if kind in UNBOUNDED_DISTRIBUTIONS:
            raise LaunchError(f"{where}: distribution {kind!r} is not supported yet; "
                              f"supported: {', '.join(SUPPORTED_DISTRIBUTIONS)}")
        if kind not in SUPPORTED_DISTRIBUTIONS:
            raise LaunchError(f"{where}: unknown distribution {kind!r}; supported: {', '.join(SUPPORTED_DISTRIBUTIONS)}")
        if kind == "categorical" and not self.values:
            raise LaunchError(f"{where}: 'values' must list at least one value")
        if kind == "constant" and self.value is None:
            raise LaunchError(f"{where}: give 'value', 'values', or 'min' and 'max'")
        if kind not in ("categorical", "constant"):
            if self.min is None or self.max is None:
                raise LaunchError(f"{where}: distribution {kind!r} needs 'min' and 'max'")
            if self.min > self.max:
                raise LaunchError(f"{where}: 'min' ({self.min}) is greater than 'max' ({self.max})")
            if kind in ("log_uniform_values", "q_log_uniform_values") and self.min <= 0:
                raise LaunchError(f"{where}: {kind} needs 'min' > 0 (got {self.min})")
        if self.probabilities is not None and (
            self.values is None or len(self.probabilities) != len(self.values)
            or not math.isclose(sum(self.probabilities), 1.0)
        ):
            raise LaunchError(f"{where}: 'probabilities' must match 'values' one to one and sum to 1")


class EarlyTerminate(BaseModel):
    """Hyperband early termination, as W&B writes it (`min_iter` or `max_iter`, `eta`, `s`)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["hyperband"]
    min_iter: PositiveInt | None = None
    max_iter: PositiveInt | None = None
    eta: float = Field(default=3, gt=1)
    s: PositiveInt | None = None
    strict: bool = False

    @model_validator(mode="after")
    def _needs_an_iteration_bound(self) -> "EarlyTerminate":
        if self.min_iter is None and (self.max_iter is None or self.s is None):
            # W&B's schema: `min_iter`, or `max_iter` with `s` (the bands count back from max_iter).
            raise ValueError("hyperband needs 'min_iter', or 'max_iter' with 's'")
        return self


class Scheduler(BaseModel):
    """How the sweep runs on the queue: at most `num_workers` trials in flight (W&B's default 8); it stops after
    `max_consecutive_failures` trials in a row failed (a broken job would otherwise fail every trial of it)."""

    model_config = ConfigDict(extra="allow")  # W&B's scheduler job keys (job, resource...) are accepted, unused
    num_workers: PositiveInt = DEFAULT_NUM_WORKERS
    max_consecutive_failures: PositiveInt = DEFAULT_MAX_CONSECUTIVE_FAILURES


class LaunchSection(BaseModel):
    """Where trials go: the queue and what every trial adds to the queue's config."""

    model_config = ConfigDict(extra="forbid")
    queue: str | None = None
    resource_args: dict[str, Any] = Field(default_factory=dict)
    template_variables: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["critical", "high", "medium", "low"] | None = None


class SweepConfig(BaseModel):
    """The whole sweep config. `check_runnable()` adds the rules a sweep needs to start."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str | None = None
    method: Literal["grid", "random", "bayes"] | None = None
    metric: Metric | None = None
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    run_cap: PositiveInt | None = None
    early_terminate: EarlyTerminate | None = None
    scheduler: Scheduler = Field(default_factory=Scheduler)
    launch: LaunchSection = Field(default_factory=LaunchSection)
    job: str | None = None
    image_uri: str | None = None
    program: str | None = None
    command: list[str] | None = None
    project: str | None = None
    entity: str | None = None

    def num_workers(self, queue_config: dict[str, Any]) -> int:
        """Trials in flight at most: the sweep's `scheduler.num_workers`, else the queue config's
        (W&B lets a queue's admin put the `scheduler` block in the queue config, seed 004), else 8.

        >>> queue_config = {"resource_args": {"scheduler": {"num_workers": 4}}}
        >>> SweepConfig().num_workers(queue_config), SweepConfig().num_workers({})
        (4, 8)
        >>> SweepConfig(scheduler={"num_workers": 2}).num_workers(queue_config)
        2
        """
        if "num_workers" in self.scheduler.model_fields_set:
            return self.scheduler.num_workers
        queue_scheduler = queue_config.get("resource_args", {}).get("scheduler") or {}
        return Scheduler.model_validate(queue_scheduler).num_workers

    def check_runnable(self) -> "SweepConfig":
        """The rules beyond types: a sweep needs a method, parameters, something to run, a bound."""
        if self.method is None:
            raise LaunchError("method: missing; expected grid, random or bayes")
        if not self.parameters:
            raise LaunchError("parameters: missing; a sweep needs at least one parameter")
        for name, parameter in self.parameters.items():
            parameter.check(name)
        if self.job is None and self.image_uri is None:
            raise LaunchError("job: missing; give 'job' (a stored job, [project/]name) or 'image_uri'")
        if self.job is not None and self.image_uri is not None:
            raise LaunchError("job and image_uri: give one, not both")
        if self.method == "bayes" and self.metric is None:
            raise LaunchError("metric: missing; bayes search needs a metric to optimize")
        if self.early_terminate is not None and self.metric is None:
            raise LaunchError("metric: missing; early_terminate needs a metric to compare trials")
        if self.method == "grid":
            for name, parameter in self.parameters.items():
                if parameter.kind not in ("categorical", "constant"):
                    raise LaunchError(f"parameters.{name}: grid search needs 'values' or 'value', "
                                      f"not distribution {parameter.kind!r}")
        elif self.run_cap is None:
            raise LaunchError(f"run_cap: missing; a {self.method} search never ends on its own")
        return self


def load_sweep_config(path: str) -> SweepConfig:
    """Read a sweep config file (YAML or JSON) and check that a sweep can start from it."""
    from pydantic import ValidationError

    from prefect_launch.config_files import load_config_file

    raw = load_config_file(path, "sweep config")
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise LaunchError(f"sweep config {path}: {where}: {error['msg']}") from None
    try:
        return config.check_runnable()
    except LaunchError as exc:
        raise LaunchError(f"sweep config {path}: {exc}") from None
