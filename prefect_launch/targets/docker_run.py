"""`docker run`'s options, as a docker queue config names them (`gpus`, `v`, `rm`): what each takes.

The tables are Docker 28.2's `docker run --help`; `tests/test_local_container_config.py` compares them
with the installed CLI, so a Docker release that adds or drops an option fails that test.

Example:
    >>> option_problems("privilegd", True)
    ['privilegd: not a docker run option (did you mean privileged?)']
    >>> option_problems("gpus", ["all", "1"])
    ['gpus: takes one value, not a list']
"""

from __future__ import annotations

import difflib
from typing import Any

# Options that take no value: `true` adds the flag, `false` or null leaves it out.
SWITCHES = frozenset({
    "detach", "disable-content-trust", "help", "init", "interactive", "no-healthcheck", "oom-kill-disable",
    "privileged", "publish-all", "quiet", "read-only", "rm", "sig-proxy", "tty", "use-api-socket",
})
# Options that may repeat: a list gives the flag once per item.
REPEATABLE = frozenset({
    "add-host", "attach", "blkio-weight-device", "cap-add", "cap-drop", "device", "device-cgroup-rule",
    "device-read-bps", "device-read-iops", "device-write-bps", "device-write-iops", "dns", "dns-option",
    "dns-search", "env", "env-file", "expose", "group-add", "label", "label-file", "link", "link-local-ip",
    "log-opt", "mount", "network-alias", "publish", "security-opt", "storage-opt", "sysctl", "tmpfs", "ulimit",
    "volume", "volumes-from",
})
# Options that take one value.
SINGLE = frozenset({
    "blkio-weight", "cgroup-parent", "cgroupns", "cidfile", "cpu-period", "cpu-quota", "cpu-rt-period",
    "cpu-rt-runtime", "cpu-shares", "cpus", "cpuset-cpus", "cpuset-mems", "detach-keys", "domainname",
    "entrypoint", "gpus", "health-cmd", "health-interval", "health-retries", "health-start-period",
    "health-timeout", "hostname", "ip", "ip6", "ipc", "isolation", "kernel-memory", "log-driver", "mac-address",
    "memory", "memory-reservation", "memory-swap", "memory-swappiness", "name", "network", "oom-score-adj",
    "pid", "pids-limit", "platform", "pull", "restart", "runtime", "shm-size", "stop-signal", "stop-timeout",
    "user", "userns", "uts", "volume-driver", "workdir",
})
SHORT = {"a": "attach", "c": "cpu-shares", "d": "detach", "e": "env", "h": "hostname", "i": "interactive", "l": "label", "m": "memory", "p": "publish", "P": "publish-all", "q": "quiet", "t": "tty", "u": "user", "v": "volume", "w": "workdir"}
SHORT = {
    "a": "attach", "c": "cpu-shares", "d": "detach", "e": "env", "h": "hostname", "i": "interactive", "l": "label",
    "m": "memory", "p": "publish", "P": "publish-all", "q": "quiet", "t": "tty", "u": "user", "v": "volume",
    "w": "workdir",
}
# Repeatable options whose items are NAME=VALUE: a mapping gives one `NAME=VALUE` item per key.
KEYED = frozenset({"env", "label", "log-opt", "storage-opt", "sysctl"})
# Options prefect-launch sets itself, which no config may set.
LAUNCH_OWNED = {
    "name": "the container is named after the run id (cancel and adoption find it by that name)",
    "detach": "the agent follows the container's output to its end",
    "entrypoint": "it is the job's entry point (-E, overrides.entrypoint)",
    "help": "it would print docker's help instead of running the job",
}
_OPTIONS = SWITCHES | REPEATABLE | SINGLE
# What a job's own resource args may set: resources, GPUs, its environment, labels, health checks. Never a
# privilege, device, capability, host namespace or path, network, security option or user (W&B's agent
# refuses the same); a queue config may opt more in with `job_may_set`.
JOB_MAY_SET = frozenset({
    "cpu-period", "cpu-quota", "cpu-shares", "cpus", "cpuset-cpus", "cpuset-mems", "env", "gpus", "memory",
    "memory-reservation", "memory-swap", "pids-limit", "platform", "shm-size", "ulimit", "workdir",
    "label", "init", "read-only", "rm", "stop-signal", "stop-timeout", "tmpfs", "health-cmd", "health-interval",
    "health-retries", "health-start-period", "health-timeout", "no-healthcheck",
})


def long_name(key: str) -> str:
    """The option's long name (`v` -> `volume`)."""
    return SHORT.get(key, key)


def option_problems(key: str, value: Any) -> list[str]:
    """What is wrong with `key: value` as a docker queue config option (nothing, for a good one)."""
    name = long_name(key)
    if name not in _OPTIONS:
        near = difflib.get_close_matches(name, _OPTIONS, n=1)
        return [f"{key}: not a docker run option" + (f" (did you mean {near[0]}?)" if near else "")]
    if name in LAUNCH_OWNED:
        return [f"{key}: set by prefect-launch, not by a queue config: {LAUNCH_OWNED[name]}"]
    if value is None:
        return []
    if name in SWITCHES:
        return [] if isinstance(value, bool) else [f"{key}: a switch, true or false (got {value!r})"]
    if isinstance(value, bool):
        return [f"{key}: takes a value, not {str(value).lower()}"]
    if isinstance(value, dict):
        if name not in KEYED:
            return [f"{key}: takes a value or a list, not a mapping"]
        return [f"{key}.{item}: a string or number" for item, v in value.items() if not _scalar(v)]
    if isinstance(value, list):
        if name not in REPEATABLE:
            return [f"{key}: takes one value, not a list"]
        return [f"{key}[{i}]: a string or number" for i, item in enumerate(value) if not _scalar(item)]
    return [] if _scalar(value) else [f"{key}: a string or number"]


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def flags(options: dict[str, Any]) -> list[str]:
    """Options (checked by `option_problems`) as `docker run` arguments, in their order.

    >>> flags({"env": ["A=1", "B"], "rm": True, "gpus": "all", "label": {"team": "ml"}, "init": False})
    ['--env', 'A=1', '--env', 'B', '--rm', '--gpus', 'all', '--label', 'team=ml']
    """
    argv: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = ("-" if len(key) == 1 else "--") + key
        if value is True:
            argv.append(flag)
        elif isinstance(value, dict):
            for name, item in value.items():
                argv += [flag, f"{name}={item}"]
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv
