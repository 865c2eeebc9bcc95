"""The launch agent: one process serving one or more queues with a shared `max_jobs`.

It drives one `LaunchWorker` per queue (work pool). Instead of waiting for the
next poll, it subscribes to the server's event stream and wakes the moment a
run is scheduled on one of its pools, or cancelled; a slow fallback poll
covers a dropped stream. `max_jobs` bounds jobs *running* across all queues:
a slot is held from claim until the job's flow run ends. When an agent dies
(`kill -9`, a lost node), the runs it held are taken over: Pending ones go
back to their queue, Running ones are adopted by the next agent that sees
them, which follows the job it had submitted and never submits it again.
An agent started before its server (a reboot, a compose file) waits for it
(`wait_for_server`: a log line per attempt, 1 s doubling to 30 s, for ever).

Example::

    config = AgentConfig(queues=["demo"], max_jobs=4)
    anyio.run(Agent(config).run)
"""

from __future__ import annotations

import logging
import math
import signal
import socket
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from uuid import UUID

import anyio
from prefect.client.orchestration import get_client
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import (
    EventAnyResourceFilter,
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
)
from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS

from prefect_launch.agent_config import AgentConfig
from prefect_launch.agent_setup import environment_problems
from prefect_launch.deployments.queues import queue_config_of, read_queue
from prefect_launch.errors import LaunchError
from prefect_launch.leftovers import clean_leftovers
from prefect_launch.ownership import MISSED_HEARTBEATS
from prefect_launch.settings import settings
from prefect_launch.targets import Target, target_class
from prefect_launch.worker.launch_worker import LaunchWorker

logger = logging.getLogger("prefect_launch.agent")

FALLBACK_POLL_SECONDS = 5.0
STARTUP_RETRY_FIRST_SECONDS = 1.0
STARTUP_RETRY_MAX_SECONDS = 30.0
STARTUP_ATTEMPT_TIMEOUT_SECONDS = 10.0
# How often the agent says what it does, as `wandb launch-agent` (every 5 min; with -v, every 20 s).
STATUS_SECONDS = 5 * 60.0
VERBOSE_STATUS_SECONDS = 20.0


async def wait_for_server(client: Any, first: float = STARTUP_RETRY_FIRST_SECONDS,
                          most: float = STARTUP_RETRY_MAX_SECONDS) -> None:
    """Return once the Prefect API answers `/health`; until then log one line per attempt and back off.

    The wait doubles from `first` to at most `most` seconds (1, 2, 4, 8, 16, 30, 30, ... s) and never
    gives up: an agent may start before its server. An attempt that gets no answer within
    `STARTUP_ATTEMPT_TIMEOUT_SECONDS` counts as failed. Only a server that cannot be reached (or a proxy
    saying it is down: 502, 503, 504) is waited for; any other answer, a refused login say, is left
    to the requests that follow to report.
    """
    import httpx

    url = str(client.api_url).rstrip("/")
    delay = first
    waited = False
    while True:
        problem: BaseException | None = None
        with anyio.move_on_after(STARTUP_ATTEMPT_TIMEOUT_SECONDS) as attempt:
            problem = await client.api_healthcheck()
        if attempt.cancelled_caught:
            problem = TimeoutError(f"no answer in {STARTUP_ATTEMPT_TIMEOUT_SECONDS:.0f} s")
        down = isinstance(problem, (httpx.TransportError, TimeoutError)) or (
            isinstance(problem, httpx.HTTPStatusError) and problem.response.status_code in (502, 503, 504))
        if not down:
            if waited:
                logger.warning("server %s reachable", url)
            return
        waited = True
        reason = " ".join(str(problem).split()) or type(problem).__name__
        logger.warning("server %s unreachable (%s), retrying in %.0f s", url, reason, delay)
        await anyio.sleep(delay)
        delay = min(delay * 2, most)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        name: str | None = None,
        poll_seconds: float = FALLBACK_POLL_SECONDS,
    ) -> None:
        if not config.queues:
            raise LaunchError("the agent has no queues: pass -q QUEUE or list them under `queues:` in its config")
        placeholders = config.placeholders()
        if placeholders:
            raise LaunchError(
                "the agent config still holds documentation placeholders at "
                + ", ".join(placeholders)
                + "; fill them in"
            )
        problems = environment_problems(config)
        if problems:
            raise LaunchError("the agent config's environment does not fit: " + "; ".join(problems))
        self.config = config
        self.name = name or f"launch-agent-{socket.gethostname()}"
        self.poll_seconds = poll_seconds
        self.workers: list[LaunchWorker] = []
        # Each queue's target, for the leftovers its jobs may leave (`leftovers.py`).
        self._targets: dict[str, Target] = {}
        self._wake = anyio.Event()
        self._orphans_wake = anyio.Event()
        self._pending_timeout = settings().pending_timeout
        # Prefect's worker heartbeat interval: this agent beats that often, and takes an agent on another host
        # for gone once its heartbeat is MISSED_HEARTBEATS of them old (every agent of a queue uses the same).
        self._heartbeat_seconds = float(PREFECT_WORKER_HEARTBEAT_SECONDS.value())

    def wake(self) -> None:
        self._wake.set()

    def _job_done(self) -> None:
        # A freed slot goes to an orphan waiting for one first (`OrphanRound`); else it matters only if runs
        # were left waiting for one: every poll costs the server writes (it marks the pool's queues as polled).
        if self._orphans_waiting():
            self._orphans_wake.set()
        elif any(worker.saturated for worker in self.workers):
            self.wake()

    def _orphans_waiting(self) -> bool:
        """An orphaned run waits for a free job slot: until it has one, this agent claims no new run."""
        return any(worker.orphans_waiting for worker in self.workers)

    def status_line(self, running: int) -> str:
        """What the agent does now, as `wandb launch-agent` prints it.

        >>> Agent(AgentConfig(queues=["a", "b"], max_jobs=2), name="n").status_line(1)
        'agent n polling on queues a, b, running 1 out of a maximum of 2 jobs'
        """
        polling = f"polling on queues {', '.join(self.config.queues)}, " if running < (self.config.max_jobs or math.inf) else ""
        return f"agent {self.name} {polling}running {running} out of a maximum of {self.config.max_jobs or 'unlimited'} jobs"

    async def _status_loop(self, limiter: anyio.CapacityLimiter) -> None:
        """The status line at start, then every 5 min (every 20 s with -v), as `wandb launch-agent` prints it."""
        every = VERBOSE_STATUS_SECONDS if self.config.verbosity >= 1 else STATUS_SECONDS
        while True:
            logger.info("%s", self.status_line(int(limiter.borrowed_tokens)))
            await anyio.sleep(every)

    async def run(self, on_ready: Callable[[], Any] | None = None) -> None:
        limiter = anyio.CapacityLimiter(self.config.max_jobs or math.inf)
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(get_client())
            await wait_for_server(client)
            pools = [await read_queue(client, queue) for queue in self.config.queues]
            self._targets = {pool.name: target_class(config.resource)() for pool in pools
                             if (config := queue_config_of(pool)) is not None}
            for pool in pools:
                worker = LaunchWorker(
                    work_pool_name=pool.name,
                    name=self.name,
                    create_pool_if_not_found=False,
                    shared_limiter=limiter,
                    on_job_done=self._job_done,
                    agent_config=self.config,
                )
                self.workers.append(await stack.enter_async_context(worker))
            logger.info(
                "Agent %s serving %s (max_jobs %s)",
                self.name,
                ", ".join(self.config.queues),
                self.config.max_jobs or "unlimited",
            )
            # Adopt a dead predecessor's running jobs before claiming new work, so they get the job slots;
            # remove what dead agents left of ended runs (a container left Exited or Created).
            await self._take_over_orphans()
            async with anyio.create_task_group() as loops:
                loops.start_soon(self._poll_loop)
                loops.start_soon(self._heartbeat_loop)
                loops.start_soon(self._orphans_loop)
                loops.start_soon(self._event_loop, [pool.id for pool in pools])
                loops.start_soon(self._stop_on_signal, loops.cancel_scope)
                loops.start_soon(self._status_loop, limiter)
                if on_ready:
                    on_ready()
            for worker in self.workers:
                worker.stop_all("agent stopping")
            # Leaving the stack waits for every stopped job's flow run to record its end.

    async def _poll_loop(self) -> None:
        backoff = 1.0
        while True:
            with anyio.move_on_after(self.poll_seconds):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                claiming = not self._orphans_waiting()
                for worker in self.workers:
                    await (worker.get_and_submit_flow_runs() if claiming else worker.check_cancellations())
                backoff = 1.0
            except Exception as exc:  # the server may be restarting; keep serving
                logger.warning("Polling failed (%s); retrying in %.0f s", exc, backoff)
                await anyio.sleep(backoff)
                # No longer apart than an ordinary poll: a server back from a restart is served within one.
                backoff = min(backoff * 2, self.poll_seconds)

    async def _heartbeat_loop(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat_seconds)
            for worker in self.workers:
                try:
                    await worker.sync_with_backend()
                except Exception as exc:
                    logger.warning("Heartbeat for queue %s failed: %s", worker.queue_name, exc)

    async def _orphans_loop(self) -> None:
        """At start, then every so often: take over runs whose agent died (see `LaunchWorker.take_over_orphans`).

        The round at start (in `run`) is what makes a restarted agent adopt its
        predecessor's running jobs at once; later rounds catch agents that die
        elsewhere (their heartbeat goes stale) and runs this agent lost to a
        server outage.
        """
        while True:
            with anyio.move_on_after(min(self._heartbeat_seconds, self._pending_timeout / 3)):
                await self._orphans_wake.wait()  # or sooner: a job ended, and an orphan waits for its slot
            self._orphans_wake = anyio.Event()
            waited = self._orphans_waiting()
            await self._take_over_orphans()
            if waited and not self._orphans_waiting():
                self.wake()  # claiming resumes

    async def _take_over_orphans(self) -> None:
        stale_after = timedelta(seconds=MISSED_HEARTBEATS * self._heartbeat_seconds)
        for worker in self.workers:
            try:
                requeued, adopted = await worker.take_over_orphans(self._pending_timeout, stale_after)
                target = self._targets.get(worker.queue_name)
                removed = await clean_leftovers(worker.client, worker.queue_name, target, logger) if target else []
            except Exception as exc:
                logger.warning("Checking queue %s for orphaned runs failed: %s", worker.queue_name, exc)
                continue
            if removed:
                logger.warning("Removed %d leftover(s) of ended or unstarted runs on queue %s: %s", len(removed),
                               worker.queue_name, ", ".join(f"{leftover.name} ({leftover.state})" for leftover in removed))
            if requeued:
                logger.warning("Put %d orphaned run(s) back on queue %s", len(requeued), worker.queue_name)
                self.wake()
            if adopted:
                logger.warning("Adopted %d running job(s) of a dead agent on queue %s", len(adopted), worker.queue_name)

    async def _event_loop(self, pool_ids: list[UUID]) -> None:
        while True:
            # The filter's window must be open-ended: its default ends at "now".
            now = datetime.now(timezone.utc)
            event_filter = EventFilter(
                occurred=EventOccurredFilter(since=now, until=now + timedelta(days=3650)),
                event=EventNameFilter(name=["prefect.flow-run.Scheduled", "prefect.flow-run.Cancelling"]),
                any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{pool_id}" for pool_id in pool_ids]),
            )
            try:
                async with get_events_subscriber(filter=event_filter) as subscriber:
                    async for event in subscriber:
                        queue = event.resource_in_role["work-pool"].name  # the filter matched one of ours
                        flow_run_id = event.resource.prefect_object_id("prefect.flow-run")
                        if event.event.endswith("Cancelling"):
                            await self._cancel(flow_run_id, queue)
                        elif not await self._take_announced(flow_run_id, queue):
                            self.wake()
            except Exception as exc:
                # The fallback poll keeps jobs flowing while the stream is down.
                logger.warning("Event stream lost (%s); reconnecting", exc)
                await anyio.sleep(2.0)

    async def _take_announced(self, flow_run_id: UUID, queue: str) -> bool:
        """Claim a run its Scheduled event names, without a poll (`LaunchWorker.take_announced`); False: poll."""
        if self._orphans_waiting():
            return False
        for worker in self.workers:
            if worker.queue_name == queue:
                try:
                    return await worker.take_announced(flow_run_id)
                except Exception as exc:  # the poll it falls back to says more, and retries
                    logger.debug("Claiming announced run %s failed: %s", flow_run_id, exc)
        return False

    async def _cancel(self, flow_run_id: UUID, queue: str | None) -> None:
        for worker in self.workers:
            if worker.queue_name != queue:  # only the run's own queue reads it
                continue
            try:
                await worker.cancel(flow_run_id)
            except Exception as exc:  # the next orphan round tries again
                logger.warning("Cancelling run %s on queue %s failed: %s", flow_run_id, worker.queue_name, exc)

    async def _stop_on_signal(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("Received %s: stopping running jobs and exiting", signal.Signals(signum).name)
                scope.cancel()
                return
