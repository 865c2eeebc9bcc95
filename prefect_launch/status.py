"""What `prefect-launch status` shows: a run's state, queue, agent, timeline and why it waits; or every queue.

Reading (`run_status`, `queue_overviews`) is separate from rendering
(`render_run`, `render_queues`, pure), so tests and other front ends can use
either. Why a run waits comes from two places:

- a run still on its queue (Scheduled): the queue's agents, by their worker
  heartbeat (none younger than `MISSED_HEARTBEATS` of its own interval means
  no agent), and the queue being paused;
- a run past submit: its target's own reason, published live in the run's
  timeline artifact (`prefect_launch.timeline`).

Example::

    async with get_client() as client:
        print(render_run(await run_status(client, await find_run(client, "abc123"))))
        print(render_queues(await queue_overviews(client)))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterEndTime,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
    FlowRunFilterWorkQueueName,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, WorkPool
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort
from prefect.exceptions import ObjectNotFound

from prefect_launch.deployments.flows import handed_over
from prefect_launch.deployments.queues import FLOW_NAME, list_queues, read_queue, runs_per_state
from prefect_launch.errors import LaunchError
from prefect_launch.fair_share import caps_of, held_by
from prefect_launch.ownership import MISSED_HEARTBEATS, Owner
from prefect_launch.spec import run_id_for
from prefect_launch.timeline import Timeline, timeline_key

# The heartbeat interval of an agent that did not say its own (Prefect's default).
DEFAULT_HEARTBEAT_SECONDS = 30.0
# A live agent takes a run within seconds; one Scheduled longer waits for a free slot.
TAKE_SECONDS = 10.0
# The recent past a waiting run's start is estimated from: runs of its queue that ended in it.
THROUGHPUT_WINDOW = 900
# How many waiting runs `find_run` looks through for one not renamed after its W&B run id yet.
WAITING_RUNS_SEARCHED = 1000
PAGE = 200  # the most runs the server sends at once


class UnknownRun(LaunchError):
    """No launch run has this W&B run id or flow run id."""


@dataclass
class Agent:
    name: str
    last_heartbeat: datetime | None
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS

    @property
    def stale_after(self) -> float:
        """Seconds without a heartbeat after which the agent is gone."""
        return MISSED_HEARTBEATS * self.heartbeat_seconds

    def age(self, now: datetime) -> float | None:
        """Seconds since its last heartbeat; None if it never sent one."""
        return None if self.last_heartbeat is None else (now - self.last_heartbeat).total_seconds()

    def alive(self, now: datetime) -> bool:
        age = self.age(now)
        return age is not None and age < self.stale_after


@dataclass
class RunStatus:
    run_id: str
    flow_run_id: UUID
    state: str
    message: str
    queue: str
    resource: str
    agent: str | None
    timeline: Timeline
    waiting: str = ""  # why the run does not run yet, when it waits
    place: Place | None = None  # where it stands on its queue, while Scheduled


@dataclass
class Place:
    """Where a waiting run stands on its queue: `position` 1 is next."""

    position: int
    waiting: int
    eta_seconds: float | None  # from the queue's recent throughput; None when it finished nothing lately

    def describe(self) -> str:
        """`position 3 of 7, starts in about 1m40s (at this queue's rate of the last 15 minutes)`."""
        text = f"position {self.position} of {self.waiting}"
        if self.eta_seconds is None:
            return text + f", no job ended on this queue in the last {THROUGHPUT_WINDOW // 60} minutes to estimate a start"
        return text + (f", starts in about {human_seconds(self.eta_seconds)} "
                       f"(at this queue's rate of the last {THROUGHPUT_WINDOW // 60} minutes)")


@dataclass
class QueueOverview:
    name: str
    resource: str
    paused: bool
    agents: list[Agent]
    runs: dict[str, int] = field(default_factory=dict)


async def find_run(client: PrefectClient, run: str) -> FlowRun:
    """The launch run named `run` (its W&B run id; the latest attempt of a requeued one) or with that flow run id."""
    try:
        return await client.read_flow_run(UUID(run))
    except (ValueError, ObjectNotFound):
        pass
    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=1,
    )
    if runs:
        return runs[0]
    waiting = await _waiting_run(client, run)
    if waiting is None:
        raise UnknownRun(f"no launch run {run!r}: give a W&B run id (the flow run's name) or a flow run id")
    return waiting


async def _waiting_run(client: PrefectClient, run_id: str) -> FlowRun | None:
    """A run not yet taken by an agent, started where Prefect names it (the UI, `prefect deployment run`, a
    schedule): its W&B run id is its spec's, or the one derived from its flow run id, until its agent renames it."""
    for offset in range(0, WAITING_RUNS_SEARCHED, PAGE):
        waiting = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[
                StateType.SCHEDULED, StateType.PENDING]))),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=PAGE,
            offset=offset,
        )
        found = next((flow_run for flow_run in waiting if wandb_run_id(flow_run) == run_id), None)
        if found is not None or len(waiting) < PAGE:
            return found
    return None


def wandb_run_id(flow_run: FlowRun) -> str:
    """A launch run's W&B run id: its spec's, else the one its flow run id gives (what its agent names it)."""
    return (flow_run.parameters.get("spec") or {}).get("run_id") or run_id_for(flow_run.id)


async def agents_of(client: PrefectClient, queue: str) -> list[Agent]:
    workers = await client.read_workers_for_work_pool(queue)
    return [Agent(worker.name, worker.last_heartbeat_time, worker.heartbeat_interval_seconds or DEFAULT_HEARTBEAT_SECONDS)
            for worker in workers]


async def run_status(client: PrefectClient, flow_run: FlowRun) -> RunStatus:
    pool = await read_queue(client, flow_run.work_pool_name) if flow_run.work_pool_name else None
    state = flow_run.state
    owner = Owner.parse(state.message if state else None)
    agent = owner.agent if owner else await _last_agent(client, flow_run)
    status = RunStatus(
        run_id=wandb_run_id(flow_run),
        flow_run_id=flow_run.id,
        state=state.name if state else "Unknown",
        message=state.message or "" if state else "",
        queue=flow_run.work_pool_name or "?",
        resource=(pool.base_job_template or {}).get("job_configuration", {}).get("resource", "?") if pool else "?",
        agent=agent,
        timeline=await _timeline(client, flow_run),
    )
    if state is not None and (state.is_scheduled() or state.is_pending()) and pool is not None:
        status.waiting = await _why_on_queue(client, pool, flow_run, owner)
        if state.is_scheduled() and not handed_over(state.message):
            status.place = await queue_place(client, pool.name, flow_run)
            status.waiting += f"; {status.place.describe()}"
            if status.timeline.current is not None:
                status.timeline.current.note = status.place.describe()
    elif state is not None and state.is_running() and status.timeline.current is not None:
        status.waiting = status.timeline.current.note
    return status


async def queue_place(client: PrefectClient, queue: str, flow_run: FlowRun) -> Place:
    """Where a Scheduled run stands on its queue: the runs before it in priority order (a work queue of a lower
    priority number first), FIFO inside one; and when it should start at the queue's recent rate."""
    priorities = {work_queue.name: work_queue.priority for work_queue in await client.read_work_queues(work_pool_name=queue)}
    mine = priorities.get(flow_run.work_queue_name or "", 0)
    pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[queue]))
    scheduled = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))

    async def waiting(queues: list[str], before: datetime | None = None) -> int:
        if not queues:
            return 0
        return await client.count_flow_runs(work_pool_filter=pool, flow_run_filter=FlowRunFilter(
            state=scheduled, work_queue_name=FlowRunFilterWorkQueueName(any_=queues),
            expected_start_time=FlowRunFilterExpectedStartTime(before_=before) if before else None))

    ahead = await waiting([name for name, priority in priorities.items() if priority < mine])
    if flow_run.work_queue_name and flow_run.expected_start_time:  # the filter's bound is inclusive: not the run itself
        ahead += await waiting([flow_run.work_queue_name], before=flow_run.expected_start_time - timedelta(microseconds=1))
    now = datetime.now(timezone.utc)
    ended = await client.count_flow_runs(work_pool_filter=pool, flow_run_filter=FlowRunFilter(
        end_time=FlowRunFilterEndTime(after_=now - timedelta(seconds=THROUGHPUT_WINDOW))))
    total = await waiting(list(priorities))
    eta = (ahead + 1) * THROUGHPUT_WINDOW / ended if ended else None
    return Place(position=ahead + 1, waiting=max(total, ahead + 1), eta_seconds=eta)


async def _last_agent(client: PrefectClient, flow_run: FlowRun) -> str | None:
    """The agent that last held the run, from the owner tag of its states (a final state carries none)."""
    if flow_run.state is None or flow_run.state.is_scheduled():
        return None
    for state in reversed(await client.read_flow_run_states(flow_run.id)):
        owner = Owner.parse(state.message)
        if owner is not None:
            return owner.agent
    return None


async def _timeline(client: PrefectClient, flow_run: FlowRun) -> Timeline:
    """The run's published timeline; before the flow has published one, its queue wait so far."""
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
            key=ArtifactFilterKey(any_=[timeline_key(wandb_run_id(flow_run))]),
        ),
        sort=ArtifactSort.UPDATED_DESC,
        limit=1,
    )
    if artifacts and isinstance(artifacts[0].data, list):
        return Timeline.from_rows(artifacts[0].data)
    timeline = Timeline()
    if flow_run.expected_start_time and flow_run.state and not flow_run.state.is_final():
        timeline.begin("queue wait", at=flow_run.expected_start_time.timestamp())
    return timeline


async def _why_on_queue(client: PrefectClient, pool: WorkPool, flow_run: FlowRun, owner: Owner | None) -> str:
    """Why a Scheduled (or just claimed) run is not running: no agent, a paused queue, or busy agents."""
    if owner is not None:
        return f"claimed by agent {owner.agent}, starting"
    if flow_run.state is not None and handed_over(flow_run.state.message):
        return f"{flow_run.state.message}; `prefect-launch status {run_id_for(flow_run.id)}` follows it"
    if pool.is_paused:
        return f"queue {pool.name} is paused"
    now = datetime.now(timezone.utc)
    agents = await agents_of(client, pool.name)
    alive = [agent.name for agent in agents if agent.alive(now)]
    if not alive:
        stale = max((agent.stale_after for agent in agents), default=MISSED_HEARTBEATS * DEFAULT_HEARTBEAT_SECONDS)
        return f"no agent on queue {pool.name} (none has sent a heartbeat in the last {stale:.0f} s)"
    capped = await held_by(client, caps_of(pool), flow_run.parameters)
    if capped:
        return capped
    scheduled_at = flow_run.state.timestamp if flow_run.state else now
    if (now - scheduled_at).total_seconds() < TAKE_SECONDS:
        return f"waiting for agent {', '.join(alive)} to take it"
    held = await client.count_flow_runs(  # a count, not a read: a read stops at one page (200 runs)
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool.name])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Pending", "Running"]))),
    )
    return (f"agent {', '.join(alive)} alive but not taking it: {held} job(s) of this queue running, "
            "so its job slots are likely full (max_jobs)")


async def queue_overviews(client: PrefectClient) -> list[QueueOverview]:
    overviews = []
    for pool in await list_queues(client):
        overviews.append(QueueOverview(
            name=pool.name,
            resource=(pool.base_job_template or {}).get("job_configuration", {}).get("resource", "?"),
            paused=pool.is_paused,
            agents=await agents_of(client, pool.name),
            runs=await runs_per_state(client, pool.name),
        ))
    return overviews


def human_seconds(value: float) -> str:
    """A duration for people.

    >>> human_seconds(0.42), human_seconds(75), human_seconds(4000)
    ('0.42 s', '1m15s', '1h06m')
    """
    if value < 60:
        return f"{value:.2f} s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def _columns(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def render_run(status: RunStatus, now: float | None = None) -> str:
    """A run's status as text: header, waiting reason, timeline (a stage going on shows its time so far).

    >>> from prefect_launch.timeline import Stage
    >>> print(render_run(RunStatus("abc", UUID(int=1), "Running", "", "gpu", "kubernetes", "agent-1",
    ...     Timeline([Stage("submit", 0.0, 0.5), Stage("start", 0.5, None, "Unschedulable: no GPU")]),
    ...     waiting="Unschedulable: no GPU"), now=12.5))
    run abc: Running
      flow run  00000000-0000-0000-0000-000000000001
      queue     gpu (kubernetes)
      agent     agent-1
      waiting   Unschedulable: no GPU
    <BLANKLINE>
      stage   duration  note
      submit  0.50 s
      start   12.00 s   ongoing: Unschedulable: no GPU
    """
    now = time.time() if now is None else now
    lines = [f"run {status.run_id}: {status.state}" + (f" ({status.message})" if status.message else "")]
    header = [["flow run", str(status.flow_run_id)], ["queue", f"{status.queue} ({status.resource})"],
              ["agent", status.agent or "-"]]
    if status.waiting:
        header.append(["waiting", status.waiting])
    lines += _columns(header)
    if status.timeline.stages:
        rows = [["stage", "duration", "note"]]
        for stage in status.timeline.stages:
            note = stage.note if stage.end is not None else ": ".join(filter(None, ["ongoing", stage.note]))
            rows.append([stage.name, human_seconds(stage.seconds(now)), note])
        lines += ["", *_columns(rows)]
    return "\n".join(lines)


def render_queues(overviews: list[QueueOverview], now: datetime | None = None) -> str:
    """Every queue: its resource, its agents with their last heartbeat, its runs per state.

    >>> now = datetime(2024, 1, 1, 12, 0, 30, tzinfo=timezone.utc)
    >>> print(render_queues([QueueOverview("gpu", "kubernetes", False,
    ...     [Agent("agent-1", datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc))], {"Completed": 3, "Running": 1})], now))
    queue gpu (kubernetes)
      agent agent-1: last heartbeat 30.00 s ago (alive)
      runs: Completed 3, Running 1
    """
    now = datetime.now(timezone.utc) if now is None else now
    if not overviews:
        return "no queues: create one with `prefect-launch queue create NAME --resource RESOURCE`"
    lines = []
    for queue in overviews:
        lines.append(f"queue {queue.name} ({queue.resource})" + (" paused" if queue.paused else ""))
        for agent in queue.agents:
            age = agent.age(now)
            beat = "never" if age is None else f"{human_seconds(age)} ago"
            lines.append(f"  agent {agent.name}: last heartbeat {beat} ({'alive' if agent.alive(now) else 'gone'})")
        if not queue.agents:
            lines.append("  no agent")
        runs = ", ".join(f"{state} {count}" for state, count in sorted(queue.runs.items()))
        lines.append(f"  runs: {runs or 'none'}")
    return "\n".join(lines)
