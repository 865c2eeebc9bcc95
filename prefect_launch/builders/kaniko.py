"""The kaniko builder: builds and pushes in the cluster, with no Docker daemon and no privileged pod.

A build is a Kubernetes Job (`cluster.py`: the context in the build-context
store, the registry login mounted at `/kaniko/.docker/config.json`, the pod's
log streamed). `builder.kaniko-config` (a Job spec, as in W&B) is merged over
the defaults: its first container's `args` replace the default of the same
`--key` (each must be `key=value`), its `env` entries replace by name, anything
else merges in. `builder.kaniko-image` names the executor image: Google
archived Kaniko in June 2025, so a maintained fork can be named there (or use
the `buildkit` builder).

`secret-name` / `secret-key` (as in W&B) name a Secret holding cloud
credentials for Kaniko itself: an AWS credentials file (mounted at
`/root/.aws/credentials`) or a GCP service-account key
(`GOOGLE_APPLICATION_CREDENTIALS`). On Azure, Kaniko reads the context with
`AZURE_STORAGE_ACCESS_KEY` from the `azure-storage-access-key` Secret the Helm
chart makes from `azureStorageAccessKey`.

Example, the Job for a plan (pure, no cluster)::

    >>> from prefect_launch.builders.base import BuildSettings
    >>> from prefect_launch.builders.plan import BuildPlan
    >>> plan = BuildPlan(context=b"", dockerfile=".launch/Dockerfile", image="reg:5000/launch:3f2a9c", generated=True)
    >>> settings = BuildSettings(builder="kaniko", destination="reg:5000/launch", build_job_name="wandb-image-build",
    ...                          kaniko_config={"spec": {"template": {"spec": {"containers": [{"args": ["--cache=false"]}]}}}})
    >>> from prefect_launch.environments import AwsEnvironment
    >>> job = render_build_job(plan, "s3://b/3f2a9c.tar.gz", settings, "wandb", AwsEnvironment("us-east-1"), "login")
    >>> job["metadata"]["name"], job["spec"]["template"]["spec"]["containers"][0]["args"][:4]
    ('wandb-image-build-3f2a9c', ['--context=s3://b/3f2a9c.tar.gz', '--dockerfile=.launch/Dockerfile', '--destination=reg:5000/launch:3f2a9c', '--cache=false'])
"""

from __future__ import annotations

import copy
from typing import Any

from prefect_launch.builders.base import BuildSettings
from prefect_launch.builders.cluster import ClusterBuilder, build_job, build_job_name, registry_login_volume
from prefect_launch.builders.plan import BuildPlan
from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment
from prefect_launch.spec import deep_merge

KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"
# Where Kaniko finds cloud credentials mounted from `secret-name`/`secret-key`: (folder, file, env).
_CLOUD_CREDENTIALS = {
    "aws": ("/root/.aws", "credentials", None),
    "gcp": ("/kaniko/.gcp", "credentials.json", "GOOGLE_APPLICATION_CREDENTIALS"),
}


def _arg_key(arg: Any) -> str:
    if not isinstance(arg, str) or not arg.startswith("--") or "=" not in arg:
        raise LaunchError(f"builder.kaniko-config: Kaniko argument {arg!r} must have the form --key=value")
    return arg.split("=", 1)[0]


def render_build_job(
    plan: BuildPlan,
    context: str,
    settings: BuildSettings,
    namespace: str,
    environment: Environment | None,
    registry_login: str | None,
) -> dict[str, Any]:
    """The Kaniko Job for a plan whose context is stored at `context`; pure.

    `environment` gives the cloud and region (read, never called); `registry_login`
    is the name of the dockerconfigjson Secret to push with, if any.
    """
    repository = plan.image.rsplit(":", 1)[0]
    defaults = [f"--context={context}", f"--dockerfile={plan.dockerfile}", f"--destination={plan.image}",
                "--cache=true", f"--cache-repo={repository}/cache", "--snapshot-mode=redo",
                "--compressed-caching=false"]
    config = copy.deepcopy(settings.kaniko_config or {})
    containers = (((config.get("spec") or {}).get("template") or {}).get("spec") or {}).pop("containers", None) or [{}]
    own = copy.deepcopy(containers[0])
    args = {_arg_key(arg): arg for arg in defaults}
    args.update({_arg_key(arg): arg for arg in own.pop("args", None) or []})
    cloud = environment.type if environment else None
    env: dict[str, dict[str, Any]] = {}
    if cloud == "aws":  # Kaniko reads an s3:// context with the AWS SDK, which needs the bucket's region
        env["AWS_REGION"] = {"name": "AWS_REGION", "value": environment.region}
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if registry_login:
        volume, mount = registry_login_volume(registry_login, "/kaniko/.docker")
        volumes.append(volume)
        mounts.append(mount)
    if settings.secret_name and settings.secret_key and cloud in _CLOUD_CREDENTIALS:
        folder, file, variable = _CLOUD_CREDENTIALS[cloud]
        volumes.append({"name": "cloud-credentials", "secret": {"secretName": settings.secret_name,
                                                                "items": [{"key": settings.secret_key, "path": file}]}})
        mounts.append({"name": "cloud-credentials", "mountPath": folder})
        if variable:
            env[variable] = {"name": variable, "value": f"{folder}/{file}"}
    if cloud == "azure":
        env["AZURE_STORAGE_ACCESS_KEY"] = {"name": "AZURE_STORAGE_ACCESS_KEY", "valueFrom": {
            "secretKeyRef": {"name": "azure-storage-access-key", "key": "password"}}}
    env.update({entry["name"]: entry for entry in own.pop("env", None) or []})
    container = deep_merge({"name": "kaniko", "image": settings.kaniko_image or KANIKO_IMAGE}, own)
    container.update(args=list(args.values()), env=list(env.values()),
                     volumeMounts=mounts + list(container.get("volumeMounts") or []))
    job = build_job(build_job_name(settings, plan.tag), namespace, plan.tag,
                    {"containers": [container], "volumes": volumes})
    merged = deep_merge(job, config)
    pod = merged["spec"]["template"]["spec"]
    pod["volumes"] = volumes + [v for v in pod["volumes"] if v not in volumes]
    pod["containers"] = [container] + containers[1:]
    return merged


class KanikoBuilder(ClusterBuilder):
    name = "kaniko"
    title = "Kaniko"

    def render_job(self, plan: BuildPlan, context: str, namespace: str, registry_login: str | None) -> dict[str, Any]:
        return render_build_job(plan, context, self.settings, namespace, self.environment, registry_login)
