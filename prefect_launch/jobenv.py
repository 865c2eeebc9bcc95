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

RUN_FILE_FLUSH_SECONDS = 1
# Linux takes at most 131,072 bytes per environment string; a longer run config goes in pieces.
MAX_ENV_VALUE = 100_000


CHECKPOINT_DIR = "LAUNCH_CHECKPOINT_DIR"
CHECKPOINT_URI = "LAUNCH_CHECKPOINT_URI"


def wandb_env(job: ResolvedJob) -> dict[str, str]:
    """The environment that makes the job's `wandb.init` join this launch's run
    (and, for a deployed flow, its Prefect engine run that flow's run).

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
    if job.author:
        env["WANDB_USERNAME"] = job.author  # W&B's agent does the same for a spec's `author`
    if job.queue:
        env["WANDB_LAUNCH_QUEUE_NAME"] = job.queue
    if job.run_config:
        env["WANDB_CONFIG"] = json.dumps(job.run_config, sort_keys=True)
    if job.run_dir is not None:
        env["WANDB_DIR"] = str(job.run_dir)
        # Sweeps read a running trial's metrics from its run file (hyperband); wandb writes it every 15 s by default.
        env["WANDB__TRANSACTION_LOG_FLUSH_INTERVAL"] = str(RUN_FILE_FLUSH_SECONDS)
    if job.attempt:
        env["WANDB_RESUME"] = "allow"  # a requeued run continues the same W&B run
    # Where the job keeps checkpoints: the same for every attempt of the run, so a requeued run resumes from them.
    if job.checkpoint_dir:
        env[CHECKPOINT_DIR] = job.checkpoint_dir
    if job.checkpoint_uri:
        env[CHECKPOINT_URI] = job.checkpoint_uri
    if job.flow_run is not None:
        # A deployed flow (`prefect_launch.deploy`): the job's `python -m prefect.engine` runs this flow run.
        env["PREFECT__FLOW_RUN_ID"] = str(job.flow_run)
        if job.prefect_api_url:
            env["PREFECT_API_URL"] = job.prefect_api_url
    return split_long_config(env, MAX_ENV_VALUE)


def split_long_config(env: dict[str, str], max_length: int) -> dict[str, str]:
    """`WANDB_CONFIG` cut into `WANDB_CONFIG_0`, `_1`, ... of at most `max_length` characters.

    For targets that limit the length of an environment value (SageMaker: 512);
    `wandb.init` joins the pieces again.

    >>> split_long_config({"WANDB_CONFIG": "abcde"}, 2)
    {'WANDB_CONFIG_0': 'ab', 'WANDB_CONFIG_1': 'cd', 'WANDB_CONFIG_2': 'e'}
    """
    config = env.get("WANDB_CONFIG")
    if config is None or len(config) <= max_length:
        return env
    pieces = {f"WANDB_CONFIG_{i}": config[start:start + max_length] for i, start in enumerate(range(0, len(config), max_length))}
    return {**{k: v for k, v in env.items() if k != "WANDB_CONFIG"}, **pieces}
