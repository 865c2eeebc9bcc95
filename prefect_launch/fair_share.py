"""Fair share: a queue's cap on the jobs each W&B entity or project runs at once.

A queue config's launch keys `max_running_per_entity: N` and `max_running_per_project: N`
become Prefect global concurrency limits, one per entity (`launch:<queue>:entity:<entity>`) and
per project (`launch:<queue>:project:<entity>:<project>`), so every agent on every host counts
the same slots on the server. An agent takes a run only once it holds a slot of each of the
run's limits under a lease (`Leases.take`); it renews the lease while the job runs and releases
it when the run ends. A lease its dead agent no longer renews lapses (Prefect's repossessor
frees it), so a killed agent never keeps a slot for good. A run the cap holds stays Scheduled,
and runs of other entities behind it on the queue start meanwhile.

Example::

    caps = Caps(queue="gpu", per_entity=2)
    caps.limits(entity="vision", project="detector")
    # {'launch:gpu:entity:vision': 2}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from httpx import HTTPStatusError
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, WorkPool
from prefect.exceptions import ObjectNotFound

from prefect_launch.deployments.queues import queue_config_of
from prefect_launch.errors import LaunchError

logger = logging.getLogger("prefect_launch.fair_share")

# A run enqueued without an entity runs as its W&B user's default entity, which only wandb knows.
DEFAULT_ENTITY = "default"
# Prefect refuses leases shorter than a minute.
MIN_LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class Caps:
    """A queue's fair-share caps, from its config's launch keys (None: no cap)."""

    queue: str
    per_entity: int | None = None
    per_project: int | None = None

    def __bool__(self) -> bool:
        return bool(self.per_entity or self.per_project)

    def named(self, entity: str | None, project: str) -> list[tuple[str, str, str, int]]:
        """Each limit a run of this entity and project takes a slot of: (name, kind, whose, cap).

        >>> Caps("gpu", per_entity=2, per_project=1).named(None, "mnist")
        [('launch:gpu:entity:default', 'entity', 'default', 2), ('launch:gpu:project:default:mnist', 'project', 'default/mnist', 1)]
        """
        entity = entity or DEFAULT_ENTITY
        named = []
        if self.per_entity:
            named.append((f"launch:{self.queue}:entity:{entity}", "entity", entity, self.per_entity))
        if self.per_project:
            named.append((f"launch:{self.queue}:project:{entity}:{project}", "project", f"{entity}/{project}", self.per_project))
        return named

    def limits(self, entity: str | None, project: str) -> dict[str, int]:
        """The concurrency limits a run of this entity and project takes a slot of, by name."""
        return {name: cap for name, _, _, cap in self.named(entity, project)}

    def named_of(self, parameters: dict[str, Any]) -> list[tuple[str, str, str, int]]:
        """`named` for a launch run, from its flow run parameters (a deployed flow's run has none)."""
        spec = parameters.get("spec")
        if not self or not isinstance(spec, dict):
            return []
        return self.named(spec.get("entity"), spec.get("project") or "uncategorized")

    def limits_of(self, parameters: dict[str, Any]) -> dict[str, int]:
        """The limits of a launch run, from its flow run parameters."""
        return {name: cap for name, _, _, cap in self.named_of(parameters)}


async def held_by(client: PrefectClient, caps: Caps, parameters: dict[str, Any]) -> str | None:
    """Why the cap holds a waiting run (`entity vision runs 2 of max_running_per_entity 2`), or None."""
    for name, kind, whose, cap in caps.named_of(parameters):
        try:
            limit = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            continue
        if limit.active_slots >= limit.limit:
            return f"held by fair share: {kind} {whose} runs {limit.active_slots} of max_running_per_{kind} {cap}"
    return None


@dataclass
class Leases:
    """The slots an agent holds for its runs, by flow run: taken before a run is claimed, renewed with the
    agent's heartbeat, released when the run ends."""

    client: PrefectClient | None
    lease_seconds: float = MIN_LEASE_SECONDS
    _held: dict[UUID, UUID] = field(default_factory=dict)
    # Adopted jobs that run already without a slot: their dead agent's lease still counts until it lapses.
    _owed: dict[UUID, dict[str, int]] = field(default_factory=dict)
    _limits_set: dict[str, int] = field(default_factory=dict)

    async def take(self, flow_run_id: UUID, limits: dict[str, int], running: bool = False) -> bool:
        """Hold a slot of every limit for this run; False if one is full (the run waits, nothing held).

        A `running` job (adopted) is owed its slot when it is refused one: each renewal tries again."""
        if not limits:
            return True
        for name, cap in limits.items():
            if self._limits_set.get(name) != cap:
                # The queue's admin may have changed the cap since (queue update): the limit follows.
                await self.client.upsert_global_concurrency_limit_by_name(name, cap)
                self._limits_set[name] = cap
        try:
            response = await self.client.increment_concurrency_slots_with_lease(
                names=sorted(limits), slots=1, mode="concurrency", lease_duration=max(self.lease_seconds, MIN_LEASE_SECONDS),
                holder=ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id),
            )
        except HTTPStatusError as exc:
            if exc.response.status_code == 423:  # Locked: a limit is full
                if running:
                    self._owed[flow_run_id] = limits
                return False
            raise
        self._owed.pop(flow_run_id, None)
        self._held[flow_run_id] = UUID(response.json()["lease_id"])
        return True

    async def release(self, flow_run_id: UUID) -> None:
        self._owed.pop(flow_run_id, None)
        lease = self._held.pop(flow_run_id, None)
        if lease is not None:
            try:
                await self.client.release_concurrency_slots_with_lease(lease)
            except Exception as exc:  # the lease lapses on its own
                logger.warning("Releasing the fair-share slot of flow run %s failed (%s); it lapses within %.0f s",
                               flow_run_id, exc, self.lease_seconds)

    async def renew(self) -> None:
        """Keep every held slot while its job runs (called with each heartbeat)."""
        for flow_run_id, lease in list(self._held.items()):
            try:
                await self.client.renew_concurrency_lease(lease, max(self.lease_seconds, MIN_LEASE_SECONDS))
            except Exception as exc:
                logger.warning("Renewing the fair-share slot of flow run %s failed: %s", flow_run_id, exc)
        for flow_run_id, limits in list(self._owed.items()):
            await self.take(flow_run_id, limits, running=True)


def caps_of(pool: WorkPool) -> Caps:
    """A queue's caps from its pool's queue config (none when it holds no valid one: its runs fail with the reason)."""
    queue = queue_config_of(pool)
    try:
        keys = queue.launch_keys() if queue is not None else None
    except LaunchError:
        keys = None
    if keys is None:
        return Caps(pool.name)
    return Caps(pool.name, keys.max_running_per_entity, keys.max_running_per_project)
