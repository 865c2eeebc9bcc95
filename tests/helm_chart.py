"""The agent's Helm chart rendered by Helm 4 in-process, and the API requests its RBAC would refuse.

`unauthorized(requests, objects)` checks the requests an agent really made to
the Kubernetes stand-in against the rendered Roles and ClusterRole, the way
the API server's RBAC authorizer matches rules (group, resource/subresource,
verb; non-resource URLs by exact path or `prefix*`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "infra" / "helm" / "prefect-launch-agent"
_VERBS = {"fetch": "get"}  # kmock's action names -> RBAC verbs where they differ


def render(values: dict | None = None) -> dict[tuple[str, str | None, str], dict]:
    """(kind, namespace, name) -> object, for a release `launch` of the chart."""
    import helm_python as helm

    rendered = helm.Chart.load(str(CHART)).render(values or {}, name="launch", namespace="wandb")
    return {(doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]): doc
            for text in rendered.values() for doc in yaml.safe_load_all(text) if doc}


def _allows(rule: dict, group: str, resource: str, verb: str) -> bool:
    return (any(g in ("*", group) for g in rule.get("apiGroups", []))
            and any(r in ("*", resource) for r in rule.get("resources", []))
            and any(v in ("*", verb) for v in rule.get("verbs", [])))


def _allows_url(rule: dict, path: str, verb: str) -> bool:
    urls = rule.get("nonResourceURLs", [])
    return verb in rule.get("verbs", []) and any(
        path == url or (url.endswith("*") and path.startswith(url[:-1])) for url in urls)


def unauthorized(requests: list, objects: dict) -> list[str]:
    """'VERB path' of each request no Role in its namespace (nor the ClusterRole) allows."""
    roles: dict[str | None, list[dict]] = {}
    for (kind, namespace, _), obj in objects.items():
        if kind in ("Role", "ClusterRole"):
            roles.setdefault(namespace, []).extend(obj["rules"])
    refused = []
    for request in requests:
        verb = _VERBS.get(request.action.name.lower(), request.action.name.lower()) if request.action else "get"
        if request.resource is None:
            allowed = any(_allows_url(rule, request.url.path, verb) for rule in roles.get(None, []))
        else:
            resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
            rules = roles.get(request.namespace, []) + roles.get(None, [])
            allowed = any(_allows(rule, request.resource.group, resource, verb) for rule in rules)
        if not allowed:
            refused.append(f"{verb} {request.url.path}")
    return refused
