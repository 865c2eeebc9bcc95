"""What a job's submitter may set in its own resource args: one declaration per target (`Target.job_policy`).

The queue config and the agent config are the admin's. Everything a job's
submitter sends as resource args (a spec's `resource_args`, `-R` with `-q`, the
Prefect UI's form, a sweep's `launch.resource_args`) is checked against its
target's policy before anything is built or started; a field the policy does
not permit is refused, naming it and saying that only the queue's config may
set it. A queue config opts more fields in, by the names the refusals use, with
the launch key `job_may_set: [volume, hostPath, ...]`.

Most targets declare the fields a submitter may set (`AllowedFields`); the
Kubernetes target, whose custom resources have fields no list can know, refuses
the fields that widen a pod's access instead (`targets/kubernetes.py`).

Example:
    >>> policy = AllowedFields({"ResourceConfig.InstanceType", "HyperParameters"})
    >>> [r.field for r in policy.refusals({"ResourceConfig": {"InstanceType": "ml.p3.2xlarge"}, "RoleArn": "admin"})]
    ['RoleArn']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from prefect_launch.errors import LaunchError
from prefect_launch.spec import LaunchKeys


@dataclass(frozen=True)
class Refusal:
    """A field of a job's own resource args that its submitter may not set."""

    field: str  # the name `job_may_set` uses to opt it in (`volume`, `hostPath`, `ResourceConfig.InstanceType`)
    path: str  # where it stands in the job's resource args
    why: str = ""

    def __str__(self) -> str:
        where = self.path if self.path == self.field else f"{self.field} at {self.path}"
        return f"{where} ({self.why})" if self.why else where


class JobPolicy(Protocol):
    def refusals(self, own: dict[str, Any]) -> list[Refusal]:
        """Every field of `own` (a job's resource args, launch keys taken off) its submitter may not set."""


@dataclass(frozen=True)
class AllowedFields:
    """A submitter may set the fields at these paths, and everything below them (`a.b`, `list[].c`).

    `key` names a top-level key as the policy does (docker's `-v` is `volume`).
    """

    fields: frozenset[str] | set[str]
    key: Callable[[str], str] = field(default=str)

    def refusals(self, own: dict[str, Any]) -> list[Refusal]:
        refused: list[Refusal] = []
        for name, value in own.items():
            self._walk(value, self.key(str(name)), str(name), refused)
        return refused

    def _walk(self, value: Any, pattern: str, path: str, refused: list[Refusal]) -> None:
        if pattern in self.fields:
            return
        if isinstance(value, dict) and self._leads_somewhere(pattern + "."):
            for name, item in value.items():
                self._walk(item, f"{pattern}.{name}", f"{path}.{name}", refused)
        elif isinstance(value, list) and self._leads_somewhere(pattern + "[]"):
            for index, item in enumerate(value):
                self._walk(item, f"{pattern}[]", f"{path}[{index}]", refused)
        else:
            refused.append(Refusal(pattern, path))

    def _leads_somewhere(self, prefix: str) -> bool:
        return any(allowed.startswith(prefix) for allowed in self.fields)


# The launch keys a submitter may set beside the target's own: W&B's docs let a job name its accelerator image.
LAUNCH_KEYS_POLICY = AllowedFields({"builder.accelerator.base_image", "builder.cuda.base_image"})


def refuse_unpermitted(policy: JobPolicy, own: dict[str, Any], opted_in: Iterable[str], resource: str) -> None:
    """Refuse a job's own resource args if they set a field neither `policy` (the target's) nor the launch keys'
    policy permits, and the queue config did not opt in."""
    launch_keys, payload = LaunchKeys.split(own)
    opted = set(opted_in)
    refused = [refusal for refusal in LAUNCH_KEYS_POLICY.refusals(launch_keys) + policy.refusals(payload)
               if refusal.field not in opted]
    if refused:
        raise LaunchError(
            f"a job's own resource args may not set {'; '.join(map(str, refused))} on a {resource} queue: only the "
            "queue's config (its admin) may set it, or let jobs set it with job_may_set"
        )
