"""The parameter search: which values the next trial gets, and what finished trials teach it.

- grid: every combination of the `values`, in order (itertools.product; nothing to learn, but
  hyperband may stop its trials).
- random: optuna's RandomSampler over the distributions.
- bayes: optuna's TPESampler (a Tree-structured Parzen Estimator: W&B's bayes uses a Gaussian
  process; both model which regions give good metrics from the trials so far).
- early_terminate hyperband is W&B's own rule (hyperband.py), decided by the sweep flow; a trial
  it stops is marked pruned here, so the sampler does not learn from its cut-short end.

Distributions map onto optuna's: `values` -> CategoricalDistribution (drawn by index, so any
JSON value works), `int_uniform` -> IntDistribution, `uniform` -> FloatDistribution,
`q_uniform` -> FloatDistribution with `step=q`, `log_uniform_values` -> FloatDistribution with
`log=True`, `log_uniform` (bounds are exponents of e) -> log FloatDistribution over
`[e**min, e**max]`, `q_log_uniform_values` -> log FloatDistribution rounded to a multiple of `q`.

Example:
    >>> from prefect_launch.sweeps.config import SweepConfig
    >>> config = SweepConfig.model_validate({"method": "grid", "job": "j",
    ...     "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y"]}, "c": {"value": 0}}})
    >>> search = Search(config)
    >>> [search.ask().params for _ in range(4)]
    [{'a': 1, 'b': 'x', 'c': 0}, {'a': 1, 'b': 'y', 'c': 0}, {'a': 2, 'b': 'x', 'c': 0}, {'a': 2, 'b': 'y', 'c': 0}]
    >>> search.ask() is None
    True
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from prefect_launch.sweeps.config import Parameter, SweepConfig


@dataclass
class Trial:
    """One set of parameter values handed out by the search (`number` counts from 0)."""

    number: int
    params: dict[str, Any]
    _optuna_trial: Any = field(default=None, repr=False)
    # Hyperband stopped it: its last reported value stands, and its end teaches the search nothing more.
    stopped_early: bool = False


class Search:
    """Hands out trials with `ask()` (None when a grid is exhausted) and learns from `tell()`."""

    def __init__(self, config: SweepConfig, seed: int | None = None) -> None:
        self.config = config
        self.asked = 0
        self._grid = _grid(config.parameters) if config.method == "grid" else None
        self._study = _study(config, seed) if self._grid is None else None  # a grid has nothing to learn

    def ask(self) -> Trial | None:
        if self._grid is not None:
            params = next(self._grid, None)
            if params is None:
                return None
            optuna_trial = self._study.ask() if self._study is not None else None
        else:
            optuna_trial = self._study.ask()
            params = {name: _suggest(optuna_trial, name, parameter) for name, parameter in self.config.parameters.items()}
        trial = Trial(self.asked, params, optuna_trial)
        self.asked += 1
        return trial

    def tell(self, trial: Trial, value: float | None) -> None:
        """Record a finished trial's metric; None marks it failed (no metric), so the sampler ignores it."""
        if trial._optuna_trial is None or trial.stopped_early:
            return
        import optuna

        if value is None or (isinstance(value, float) and math.isnan(value)):
            self._study.tell(trial._optuna_trial, state=optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(trial._optuna_trial, value)

    def stopped_early(self, trial: Trial) -> None:
        """Hyperband stopped it: pruned for the sampler, which then does not read its end as a result."""
        import optuna

        if trial._optuna_trial is not None:
            self._study.tell(trial._optuna_trial, state=optuna.trial.TrialState.PRUNED)
        trial.stopped_early = True


def _grid(parameters: dict[str, Parameter]) -> Iterator[dict[str, Any]]:
    names = list(parameters)
    choices = [parameters[n].values if parameters[n].kind == "categorical" else [parameters[n].value] for n in names]
    for combination in itertools.product(*choices):
        yield dict(zip(names, combination))


def _study(config: SweepConfig, seed: int | None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are reported by the sweep flow
    if config.method == "bayes":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    goal = config.metric.goal if config.metric else "minimize"
    return optuna.create_study(direction=goal, sampler=sampler)


def _suggest(trial, name: str, parameter: Parameter) -> Any:
    kind = parameter.kind
    if kind == "constant":
        return parameter.value
    if kind == "categorical":
        # By index: optuna's categorical choices must be plain scalars, W&B's values can be anything.
        index = trial.suggest_categorical(name, list(range(len(parameter.values))))
        return parameter.values[index]
    low, high = parameter.min, parameter.max
    if kind == "int_uniform":
        return trial.suggest_int(name, int(low), int(high))
    if kind == "uniform":
        return trial.suggest_float(name, low, high)
    if kind == "q_uniform":
        return trial.suggest_float(name, low, high, step=parameter.q or 1.0)
    if kind == "log_uniform_values":
        return trial.suggest_float(name, low, high, log=True)
    if kind == "log_uniform":
        return trial.suggest_float(name, math.exp(low), math.exp(high), log=True)
    if kind == "q_log_uniform_values":
        q = parameter.q or 1.0
        return round(trial.suggest_float(name, low, high, log=True) / q) * q
    raise AssertionError(f"parameters.{name}: {kind!r} passed config checks but has no sampler")
