"""The BuildKit builder: builds and pushes in the cluster with BuildKit run rootless and daemonless.

Kaniko was archived by Google in June 2025; BuildKit, run without a daemon
(`buildctl-daemonless.sh`) as an unprivileged user, is the maintained way to
build in a pod. A build is a Kubernetes Job (`cluster.py`: the context in the
build-context store, the registry login mounted, the pod's log streamed):

- an init container fetches the context over a presigned URL that expires
  with the build (`context_store.presigned_url`) into an `emptyDir`;
- the build container runs `buildctl-daemonless.sh build` with the plan's
  Dockerfile, pushes the image (`--output type=image,push=true`) and keeps a
  registry build cache beside the repository (`<repository>:buildcache`,
  `--import-cache`/`--export-cache type=registry,mode=max`), so every agent's
  builds share it;
- both run as user 1000 with no privilege (BuildKit's rootless mode, its
  process sandbox off: `--oci-worker-no-process-sandbox`); its
  documentation's seccomp and AppArmor profiles, `Unconfined`, are what
  rootless BuildKit needs to make its user namespace in a pod.

`builder.buildkit-image` names the image (default below); `build-job-name`
names the Job as for kaniko.

Example, the Job for a plan (pure, no cluster)::

    >>> from prefect_launch.builders.base import BuildSettings
    >>> plan = BuildPlan(context=b"", dockerfile=".launch/Dockerfile", image="reg:5000/launch:3f2a9c", generated=True)
    >>> job = render_buildkit_job(plan, "https://s3/ctx?signed", BuildSettings(builder="buildkit"), "wandb", "login")
    >>> build = job["spec"]["template"]["spec"]["containers"][0]
    >>> build["args"][build["args"].index("--output") + 1], build["securityContext"]["runAsNonRoot"]
    ('type=image,name=reg:5000/launch:3f2a9c,push=true', True)
"""

from __future__ import annotations

from typing import Any

from prefect_launch.builders import context_store
from prefect_launch.builders.base import BuildSettings
from prefect_launch.builders.cluster import ClusterBuilder, build_job, build_job_name, registry_login_volume
from prefect_launch.builders.plan import BuildPlan
from prefect_launch.settings import settings as launch_settings

BUILDKIT_IMAGE = "moby/buildkit:v0.23.2-rootless"
WORKSPACE = "/workspace"
HOME = "/home/user"
# Rootless BuildKit, as its documentation runs it in a pod: an unprivileged user, no privilege, its own
# user namespace (which needs the runtime's default seccomp and AppArmor profiles off).
ROOTLESS = {
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "runAsNonRoot": True,
    "privileged": False,
    "seccompProfile": {"type": "Unconfined"},
    "appArmorProfile": {"type": "Unconfined"},
}


def render_buildkit_job(plan: BuildPlan, context_url: str, settings: BuildSettings, namespace: str,
                        registry_login: str | None) -> dict[str, Any]:
    """The BuildKit Job for a plan whose context the init container fetches from `context_url`; pure."""
    repository = plan.image.rsplit(":", 1)[0]
    image = settings.buildkit_image or BUILDKIT_IMAGE
    workspace = {"name": "workspace", "mountPath": WORKSPACE}
    fetch = {
        "name": "context",
        "image": image,
        "command": ["sh", "-c", f'wget -qO- "$CONTEXT_URL" | tar -xzf - -C {WORKSPACE}'],
        "env": [{"name": "CONTEXT_URL", "value": context_url}],
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True, "privileged": False,
                            "allowPrivilegeEscalation": False},
        "volumeMounts": [workspace],
    }
    mounts = [workspace, {"name": "buildkitd", "mountPath": f"{HOME}/.local/share/buildkit"}]
    volumes = [{"name": "workspace", "emptyDir": {}}, {"name": "buildkitd", "emptyDir": {}}]
    if registry_login:
        volume, mount = registry_login_volume(registry_login, f"{HOME}/.docker")
        volumes.append(volume)
        mounts.append(mount)
    cache = f"type=registry,ref={repository}:buildcache"
    build = {
        "name": "buildkit",
        "image": image,
        "command": ["buildctl-daemonless.sh"],
        "args": ["build", "--frontend", "dockerfile.v0", "--local", f"context={WORKSPACE}",
                 "--local", f"dockerfile={WORKSPACE}", "--opt", f"filename={plan.dockerfile}",
                 "--output", f"type=image,name={plan.image},push=true",
                 "--import-cache", cache, "--export-cache", f"{cache},mode=max"],
        "env": [{"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"},
                {"name": "DOCKER_CONFIG", "value": f"{HOME}/.docker"}],
        "securityContext": ROOTLESS,
        "volumeMounts": mounts,
    }
    return build_job(build_job_name(settings, plan.tag), namespace, plan.tag,
                     {"initContainers": [fetch], "containers": [build], "volumes": volumes})


class BuildKitBuilder(ClusterBuilder):
    name = "buildkit"
    title = "BuildKit"

    def render_job(self, plan: BuildPlan, context: str, namespace: str, registry_login: str | None) -> dict[str, Any]:
        url = context_store.presigned_url(context, self.environment, launch_settings().build_timeout + 600)
        return render_buildkit_job(plan, url, self.settings, namespace, registry_login)
