"""The environment every launched job gets, whatever its target.

Example:
    >>> from prefect_launch.spec import ResolvedJob
    >>> env = wandb_env(ResolvedJob(run_id="r1", run_name="n", project="p", argv=["x"],
    ...                             run_config={"lr": 0.1}))
    >>> env["WANDB_RUN_ID"], env["WANDB_CONFIG"]
    ('r1', '{"lr": 0.1}')
"""

from __future__ import annotations

import json

from prefect_launch.spec import ResolvedJob


def wandb_env(job: ResolvedJob) -> dict[str, str]:
    """The environment that makes the job's `wandb.init` join this launch's run.

    `WANDB_LAUNCH` + `WANDB_CONFIG` make wandb apply the run-config overrides on
    top of the config the script passes to `wandb.init`, as W&B Launch does.
    """
    env = {
        "WANDB_RUN_ID": job.run_id,
        "WANDB_NAME": job.run_name,
        "WANDB_PROJECT": job.project,
        "WANDB_LAUNCH": "True",
    }
    if job.entity:
        env["WANDB_ENTITY"] = job.entity
    if job.queue:
        env["WANDB_LAUNCH_QUEUE_NAME"] = job.queue
    if job.run_config:
        env["WANDB_CONFIG"] = json.dumps(job.run_config, sort_keys=True)
    if job.run_dir is not None:
        env["WANDB_DIR"] = str(job.run_dir)
    return env
