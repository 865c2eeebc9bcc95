"""Hyperband early termination, as W&B's sweep controller decides it.

W&B (wandb/sweeps, `hyperband_stop_runs`) does not sample brackets: it checks every running run
at fixed bands of its metric history. The bands come from `min_iter` (`min_iter * eta**k`) or
from `max_iter` and `s` (`max_iter / eta**i` for `i` in 1..s, whole numbers, at least 1). A
band's threshold is the value at the `1/eta` quantile of every run that has reached it, finished
or not; a running run whose value at the last band it has passed is worse than that band's
threshold is stopped. A band `b` is passed once the run has logged the metric more than `b`
times: the band counts logged values (the history rows that carry the metric), not `_step`.

The rule is deterministic: the same histories always stop the same runs.

Example (W&B's own case: b and c are stopped, c at its second band):
    >>> from prefect_launch.sweeps.config import EarlyTerminate
    >>> bands = hyperband_bands(EarlyTerminate(type="hyperband", max_iter=5, eta=2, s=2))
    >>> bands
    [1, 2]
    >>> histories = {"a": [10, 9], "b": [10, 10], "c": [10, 8, 8], "d": [10, 7, 7], "e": [10, 6, 6]}
    >>> sorted(runs_to_stop(histories, running={"b", "c", "d"}, bands=bands, eta=2, goal="minimize"))
    ['b', 'c']
"""

from __future__ import annotations

from typing import Hashable, Iterable, Literal, Mapping, Sequence

from prefect_launch.sweeps.config import EarlyTerminate

# W&B builds 100 bands from min_iter; any history reaches only the first few of them.
_MIN_ITER_BANDS = 100


def hyperband_bands(config: EarlyTerminate) -> list[int]:
    """The history lengths at which runs are compared, ascending."""
    if config.max_iter is not None and config.s is not None:
        bands, band = [], float(config.max_iter)
        for _ in range(config.s):
            band /= config.eta
            if band < 1:
                break
            bands.append(int(band))
        return sorted(bands)
    bands, band = [], float(config.min_iter)
    for _ in range(_MIN_ITER_BANDS):
        if config.max_iter is not None and band > config.max_iter:
            break  # max_iter as the last band to trim at
        bands.append(int(band))
        band *= config.eta
    return bands


def runs_to_stop(histories: Mapping[Hashable, Sequence[float]], running: Iterable[Hashable], bands: list[int],
                 eta: float, goal: Literal["minimize", "maximize"]) -> set[Hashable]:
    """Which of the `running` runs to stop, given every run's metric history (finished runs too)."""
    sign = 1.0 if goal == "minimize" else -1.0
    signed = {key: [sign * value for value in history] for key, history in histories.items()}
    thresholds = {}
    for band in bands:
        reached = sorted(history[band] for history in signed.values() if len(history) > band)
        if reached:
            thresholds[band] = reached[int(len(reached) * (1.0 / eta))]
    stop = set()
    for key in running:
        history = signed.get(key, [])
        passed = [band for band in bands if band < len(history)]
        if passed and history[passed[-1]] > thresholds[passed[-1]]:
            stop.add(key)
    return stop
