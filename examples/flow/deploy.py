"""Send the flow in flow.py to a launch queue, then run it once and print its result.

    export PREFECT_API_URL=$(prefect-launch server start)
    prefect-launch queue create flows --resource local-process
    prefect-launch agent -q flows &
    python examples/flow/deploy.py flows
"""

import sys

from prefect.deployments import run_deployment

import prefect_launch
from flow import train

queue = sys.argv[1] if len(sys.argv) > 1 else "flows"
deployment_id = prefect_launch.deploy(train, queue=queue, parameters={"epochs": 4})
print(f"deployed train/train to queue {queue}: {deployment_id}")
flow_run = run_deployment(deployment_id, parameters={"lr": 0.2}, timeout=600)
print(f"flow run {flow_run.name}: {flow_run.state.name}")
sys.exit(0 if flow_run.state.is_completed() else 1)
