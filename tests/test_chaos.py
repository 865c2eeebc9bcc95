"""The chaos drill (`drills/chaos.py`) at CI size, and the measurements its verdict rests on.

The drill runs a real Prefect server on its own PostgreSQL, three agents on a local-process, a
local-container, a local-container `--rm` and a Kubernetes stand-in queue, kills agents with
SIGKILL and restarts the server while jobs run, then judges every job by its own records. At
CI size: 24 jobs, max_jobs 2, 3 kills, 1 server restart. The full size (1,000 jobs, 12 kills,
2 restarts) is `.venv/bin/python drills/chaos.py`.
"""

from __future__ import annotations

import doctest
from datetime import datetime, timedelta, timezone

import pytest
from prefect.states import Completed, Pending, Running, Scheduled

import chaos  # drills/chaos.py (conftest puts drills/ on the path)

CI = dict(jobs=24, agents=3, max_jobs=2, kills=3, restarts=1)
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)


def _at(state, seconds: float):
    state.timestamp = T0 + timedelta(seconds=seconds)
    return state


def test_the_drills_measurements_see_overlap_deaths_and_orphan_waits() -> None:
    assert doctest.testmod(chaos, raise_on_error=False).failed == 0
    a, b = "on agent a [host:100:7]", "on agent b [host:200:9]"
    died = T0.timestamp() + 10
    one = [_at(Pending(message=f"Claimed {a}"), 0), _at(Running(message=f"Running {a}"), 1),
           _at(Running(message=f"Running {b}, adopted"), 14), _at(Completed(), 20)]
    two = [_at(Running(message=f"Running {a}"), 2), _at(Completed(), 5)]
    three = [_at(Pending(message=f"Claimed {a}"), 9), _at(Scheduled(message="Back on queue q"), 12)]
    deaths = {(100, 7): died}
    spans = chaos.running_spans(one, deaths, now=T0.timestamp() + 30)
    assert spans[(100, 7)] == [(T0.timestamp() + 1, died)]  # a's time ends at its death, not at b's adoption
    assert spans[(200, 9)] == [(T0.timestamp() + 14, T0.timestamp() + 20)]
    assert chaos.orphan_waits(one, deaths) == [("adopted", 4.0)]
    assert chaos.orphan_waits(two, deaths) == []  # ended before the kill: no orphan
    assert chaos.orphan_waits(three, deaths) == [("requeued", 2.0)]

    over = chaos.Result(jobs=4, agents=1, max_jobs=1, max_running_per_agent={"100:7": 2}, lost=["x"],
                        twice=["y"], false_failures=["z"], mismatched=["w, expected Completed"])
    problems = " | ".join(over.failures())
    assert "1 run(s) lost" in problems and "1 run(s) started twice" in problems
    assert "failed falsely" in problems and "other than what the job did" in problems
    assert "agents ran more than max_jobs 1 at once: {'100:7': 2}" in problems
    assert "result: FAILED" in over.table()


@pytest.mark.timeout(900)
def test_chaos_at_ci_size_loses_nothing_runs_nothing_twice_and_ends_every_run_as_its_job_did() -> None:
    result = chaos.run_drill(**CI)
    print(result.table())
    assert result.failures() == [], result.table()
    assert result.kills == CI["kills"] and result.restarts == CI["restarts"]
    assert sum(result.outcomes.values()) == CI["jobs"]  # every run ended, each as its job did
    assert result.postgres_version.startswith("PostgreSQL ")
    assert sum(result.per_queue.values()) == CI["jobs"] and min(result.per_queue.values()) > 0
